"""Programme set-up from a YAML file: the programme, its cohorts, homes, waves and what
each wave asks of whom.

Loading is idempotent: everything is matched by its key (programme key, cohort key, wave
key, home name), so the same file loaded twice changes nothing, and an edited file updates
what it names. A wave that has already sent invitations keeps the instrument versions it
started with, so answers within a wave always share one wording.

File format (see `examples/programme.yaml`)::

    programme: {key, name, timezone?, anonymity_threshold?, contact?,
                signposts?: [{id, instrument, item, values: [1], message}],
                min_raters?: {staff: 5, peer: 3, line_manager: 1},
                send_window?: {start: "09:00", end: "20:00"},
                leads?: [email, ...],
                erasure?: keep_anonymous | delete, retention_days?: 365}
    cohorts:
      - key, name, starts_on?
        homes: [name | {name, cqc_location_id?, local_authority?}]
        waves:
          - key, kind (baseline|midpoint|end|follow_up|pulse), name?,
            opens: "YYYY-MM-DD HH:MM" (programme time zone),
            closes: ... | open_for_days: 7,
            repeat?: {every: week|month, on?: "tuesday" | "first tuesday" | 15, count: 6},
            reminders?: {after_days: [2, 5], max?: 2},
            ask:
              - {instrument, roles: [...], channel?: sms|email, sms?: conversation|link}
              - {instrument, subjects: manager, raters: {self: [manager], staff: [...]}}

A `pulse` wave with `repeat` becomes one wave per occurrence, keyed `<key>-YYYY-MM-DD`
(the local opening date): `opens` gives the first date and the time of day, and each
occurrence stays open `open_for_days`. Reloading matches occurrences by key; occurrences
the file no longer produces are deleted unless they already have invitations.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from dateutil import rrule
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import (
    CHANNELS,
    RATER_RELATIONS,
    ROLES,
    WAVE_KINDS,
    CareHome,
    Cohort,
    Invitation,
    Programme,
    Wave,
    WaveInstrument,
)
from storage.privacy import DEFAULT_ERASURE_MODE, DEFAULT_RETENTION_DAYS, ERASURE_MODES
from storage.roster import normalise_home_key
from surveys.catalogue import ensure_version
from surveys.conversation import Signpost
from surveys.instruments import InstrumentDefinition, load_library
from surveys.schedule import parse_hhmm

SMS_MODES = ("conversation", "link")
_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class ProgrammeError(ValueError):
    """The programme file is invalid; `problems` lists each field path and reason."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s):\n{lines}")


@dataclass
class ProgrammeReport:
    """What loading a programme file did."""

    programme_key: str
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable lines for the CLI."""
        if not self.created and not self.updated:
            return f"programme {self.programme_key}: no changes"
        lines = [f"programme {self.programme_key}:"]
        lines += [f"  created {what}" for what in self.created]
        lines += [f"  updated {what}" for what in self.updated]
        return "\n".join(lines)


class _Checker:
    """Collects every problem in the file instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def need(self, data: Any, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
        if not isinstance(data, dict) or key not in data or data[key] in (None, ""):
            self.problems.append(f"{where}.{key}: missing")
            return None
        value = data[key]
        if not isinstance(value, kind):
            self.problems.append(f"{where}.{key}: expected {_kind_name(kind)}, got {value!r}")
            return None
        return value

    def unknown(self, data: Any, allowed: set[str], where: str) -> None:
        if isinstance(data, dict):
            for key in sorted(set(data) - allowed):
                self.problems.append(f"{where}.{key}: unknown field (allowed: {sorted(allowed)})")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "text", list: "a list", dict: "a mapping", int: "a whole number"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _when(value: Any, tz: ZoneInfo, where: str, check: _Checker) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        local = value
    elif isinstance(value, dt.date):
        local = dt.datetime.combine(value, dt.time(9, 0))
    elif isinstance(value, str):
        try:
            local = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            check.problems.append(f"{where}: {value!r} is not a date-time like 2027-01-04 09:00")
            return None
    else:
        check.problems.append(f"{where}: missing or not a date-time like 2027-01-04 09:00")
        return None
    if local.tzinfo is None:
        local = local.replace(tzinfo=tz)
    return local.astimezone(dt.UTC)


def _roles(value: Any, where: str, check: _Checker) -> list[str]:
    if not isinstance(value, list) or not value:
        check.problems.append(f"{where}: expected a non-empty list of roles {list(ROLES)}")
        return []
    bad = [r for r in value if r not in ROLES]
    if bad:
        check.problems.append(f"{where}: unknown role(s) {bad}; known roles: {list(ROLES)}")
    return [r for r in value if r in ROLES]


def _audience(ask: dict[str, Any], where: str, check: _Checker) -> dict[str, Any]:
    if "raters" in ask or "subjects" in ask:
        subject = ask.get("subjects")
        if subject not in ROLES:
            check.problems.append(f"{where}.subjects: expected a role such as manager")
        raters = ask.get("raters")
        if not isinstance(raters, dict) or not raters:
            check.problems.append(f"{where}.raters: expected a mapping of relation to roles")
            return {}
        out: dict[str, list[str]] = {}
        for relation, roles in raters.items():
            if relation not in RATER_RELATIONS:
                check.problems.append(
                    f"{where}.raters.{relation}: unknown relation; use {list(RATER_RELATIONS)}"
                )
                continue
            out[relation] = _roles(roles, f"{where}.raters.{relation}", check)
        return {"subject_role": subject, "raters": out}
    return {"roles": _roles(ask.get("roles"), f"{where}.roles", check)}


def parse_programme(path: str | Path) -> dict[str, Any]:
    """Read and check a programme file; returns a normalised plan or raises ProgrammeError."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProgrammeError(str(path), ["file not found"]) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ProgrammeError(str(path), [f"not valid YAML: {exc}"]) from None
    check = _Checker()
    check.unknown(raw, {"programme", "cohorts"}, "(top level)")
    prog = check.need(raw, "programme", "(top level)", dict) or {}
    check.unknown(
        prog,
        {
            "key",
            "name",
            "timezone",
            "anonymity_threshold",
            "contact",
            "signposts",
            "min_raters",
            "send_window",
            "leads",
            "erasure",
            "retention_days",
        },
        "programme",
    )
    key = check.need(prog, "key", "programme")
    if key and not _KEY.match(key):
        check.problems.append(f"programme.key: {key!r} must be lower-case letters, digits, - or _")
    tz_name = prog.get("timezone", "Europe/London")
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        check.problems.append(f"programme.timezone: {tz_name!r} is not a time zone")
        tz = ZoneInfo("Europe/London")
    threshold = prog.get("anonymity_threshold", 5)
    if not isinstance(threshold, int) or isinstance(threshold, bool) or threshold < 1:
        check.problems.append("programme.anonymity_threshold: expected a whole number >= 1")
    plan: dict[str, Any] = {
        "key": key,
        "name": check.need(prog, "name", "programme"),
        "timezone": tz_name,
        "anonymity_threshold": threshold,
        "cohorts": [],
    }
    library = load_library()
    contact = prog.get("contact")
    if contact is not None and not isinstance(contact, str):
        check.problems.append("programme.contact: expected text (an email or phone number)")
    plan["settings"] = {
        "contact": contact,
        "signposts": _signposts(prog.get("signposts") or [], library, check),
        "min_raters": _min_raters(prog.get("min_raters"), check),
        "send_window": _send_window(prog.get("send_window"), check),
        "leads": _leads(prog.get("leads"), check),
        **_privacy(prog, check),
    }
    cohorts = check.need(raw, "cohorts", "(top level)", list) or []
    for c_index, cohort in enumerate(cohorts):
        plan["cohorts"].append(_parse_cohort(cohort, f"cohorts[{c_index}]", tz, library, check))
    _check_unique([c["key"] for c in plan["cohorts"]], "cohorts[].key", check)
    _check_stored_text(plan, check)
    if check.problems:
        raise ProgrammeError(str(path), check.problems)
    return plan


# The longest text each stored name may be (the columns of storage.models).
_TEXT_LIMITS = {"name": 200, "cqc_location_id": 32, "local_authority": 100}


def _check_stored_text(plan: dict[str, Any], check: _Checker) -> None:
    """Names the database cannot hold are problems in the file, not database errors.

    Found by tests/attack/test_injection.py: a name with a NUL byte (PostgreSQL text cannot
    hold one) or longer than its column failed the load with a DataError and a traceback
    on PostgreSQL, and was stored as given on SQLite.
    """
    texts = [("programme.name", plan["name"], "name")]
    for c, cohort in enumerate(plan["cohorts"]):
        where = f"cohorts[{c}]"
        texts.append((f"{where}.name", cohort["name"], "name"))
        for h, home in enumerate(cohort["homes"]):
            for field_name in _TEXT_LIMITS:
                value = home.get(field_name)
                texts.append((f"{where}.homes[{h}].{field_name}", value, field_name))
        for wave in cohort["waves"]:
            texts.append((f"{where}.waves[{wave['key']}].name", wave["name"], "name"))
    for where, value, field_name in texts:
        if not isinstance(value, str):
            continue
        if "\x00" in value:
            check.problems.append(f"{where}: contains a NUL character, which cannot be stored")
        elif len(value) > _TEXT_LIMITS[field_name]:
            check.problems.append(
                f"{where}: too long ({len(value)} characters; at most {_TEXT_LIMITS[field_name]})"
            )


DEFAULT_MIN_RATERS = {"staff": 5, "peer": 3, "line_manager": 1}
"""The fewest raters in a 360 relation group for its scores to be reported. Staff and peers
are anonymous groups; a line manager is reported by name (and is told so)."""


def _min_raters(raw: Any, check: _Checker) -> dict[str, int]:
    """Per-relation minimum group sizes for 360 reports, over the defaults."""
    minimums = dict(DEFAULT_MIN_RATERS)
    if raw is None:
        return minimums
    if not isinstance(raw, dict):
        check.problems.append("programme.min_raters: expected a mapping like {staff: 5}")
        return minimums
    for relation, value in raw.items():
        where = f"programme.min_raters.{relation}"
        if relation not in DEFAULT_MIN_RATERS:
            check.problems.append(f"{where}: unknown relation; use {list(DEFAULT_MIN_RATERS)}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
            check.problems.append(f"{where}: expected a whole number >= 1")
        else:
            minimums[relation] = value
    return minimums


def _privacy(prog: dict[str, Any], check: _Checker) -> dict[str, Any]:
    """What erasing a person does to their answers, and how long contact details and
    message text are kept after the programme's last wave closes (see storage.privacy)."""
    erasure = prog.get("erasure", DEFAULT_ERASURE_MODE)
    if erasure not in ERASURE_MODES:
        check.problems.append(
            f"programme.erasure: {erasure!r} is not one of {list(ERASURE_MODES)}"
            " (keep_anonymous keeps answers without anything that identifies the person)"
        )
    days = prog.get("retention_days", DEFAULT_RETENTION_DAYS)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        check.problems.append("programme.retention_days: expected a whole number of days >= 1")
    return {"erasure": erasure, "retention_days": days}


def _send_window(raw: Any, check: _Checker) -> dict[str, str] | None:
    """The daily local hours messages may go out, e.g. {start: "09:00", end: "20:00"}."""
    if raw is None:
        return None
    where = "programme.send_window"
    if not isinstance(raw, dict):
        check.problems.append(f'{where}: expected a mapping like {{start: "09:00", end: "20:00"}}')
        return None
    check.unknown(raw, {"start", "end"}, where)
    times = {}
    for name in ("start", "end"):
        value = raw.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            # YAML 1.1 reads an unquoted 20:00 (or 9:00) as minutes, 1200: back to HH:MM.
            value = f"{value // 60:02d}:{value % 60:02d}"
        try:
            times[name] = parse_hhmm(value)
        except ValueError as exc:
            check.problems.append(f"{where}.{name}: {exc}")
    if len(times) == 2 and times["end"] <= times["start"]:
        check.problems.append(f"{where}.end: must be after start")
    if len(times) != 2:
        return None
    return {name: value.strftime("%H:%M") for name, value in times.items()}


def _leads(raw: Any, check: _Checker) -> list[str]:
    """The programme leads' email addresses, for the weekly management-information email."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        check.problems.append("programme.leads: expected a list of email addresses")
        return []
    out = []
    for index, value in enumerate(raw):
        where = f"programme.leads[{index}]"
        if not isinstance(value, str):
            check.problems.append(f"{where}: expected an email address, got {value!r}")
            continue
        try:
            address = validate_email(value.strip(), check_deliverability=False).normalized
        except EmailNotValidError as exc:
            check.problems.append(f"{where}: {value!r} is not an email address: {exc}")
            continue
        if address not in out:
            out.append(address)
    return out


def _signposts(
    raw: Any, library: dict[str, InstrumentDefinition], check: _Checker
) -> list[dict[str, Any]]:
    """Support messages the programme attaches to answers, e.g. morale 1 -> where to get help."""
    if not isinstance(raw, list):
        check.problems.append("programme.signposts: expected a list")
        return []
    out = []
    for index, entry in enumerate(raw):
        where = f"programme.signposts[{index}]"
        check.unknown(entry, {"id", "instrument", "item", "values", "message"}, where)
        ident, name = check.need(entry, "id", where), check.need(entry, "instrument", where)
        item, message = check.need(entry, "item", where), check.need(entry, "message", where)
        values = entry.get("values") if isinstance(entry, dict) else None
        if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
            check.problems.append(f"{where}.values: expected a list of answer numbers")
            values = []
        if name and name not in library:
            check.problems.append(f"{where}.instrument: unknown instrument {name!r}")
        elif name and item and item not in library[name].item_ids:
            check.problems.append(f"{where}.item: {name} has no item {item!r}")
        if ident and values and isinstance(message, str):
            try:  # the engine's own rule: at least one value, one SMS segment
                Signpost(ident, name or "", item or "", frozenset(values), message)
            except ValueError as exc:
                check.problems.append(f"{where}.message: {exc}")
        out.append(
            {"id": ident, "instrument": name, "item": item, "values": values, "message": message}
        )
    _check_unique([s["id"] for s in out], "programme.signposts[].id", check)
    return out


def _parse_cohort(
    cohort: Any, where: str, tz: ZoneInfo, library: dict[str, InstrumentDefinition], check: _Checker
) -> dict[str, Any]:
    check.unknown(cohort, {"key", "name", "starts_on", "homes", "waves"}, where)
    key = check.need(cohort, "key", where)
    if key and not _KEY.match(key):
        check.problems.append(f"{where}.key: {key!r} must be lower-case letters, digits, - or _")
    starts_on = cohort.get("starts_on") if isinstance(cohort, dict) else None
    if starts_on is not None and not isinstance(starts_on, dt.date):
        check.problems.append(f"{where}.starts_on: {starts_on!r} is not a date like 2027-01-11")
        starts_on = None
    homes = []
    for h_index, home in enumerate(check.need(cohort, "homes", where, list) or []):
        h_where = f"{where}.homes[{h_index}]"
        if isinstance(home, str):
            home = {"name": home}
        check.unknown(home, {"name", "cqc_location_id", "local_authority"}, h_where)
        if check.need(home, "name", h_where):
            homes.append(home)
    waves: list[dict[str, Any]] = []
    series: dict[str, list[str]] = {}
    for w_index, wave in enumerate(check.need(cohort, "waves", where, list) or []):
        plan = _parse_wave(wave, f"{where}.waves[{w_index}]", tz, library, check)
        occurrences = _expand(plan, wave, f"{where}.waves[{w_index}]", tz, check)
        if occurrences is None:
            waves.append(plan)
        else:
            waves += occurrences
            series[plan["key"]] = [o["key"] for o in occurrences]
    _check_unique([w["key"] for w in waves], f"{where}.waves[].key", check)
    return {
        "key": key,
        "name": check.need(cohort, "name", where),
        "starts_on": starts_on,
        "homes": homes,
        "waves": waves,
        "series": series,
    }


def _parse_wave(
    wave: Any, where: str, tz: ZoneInfo, library: dict[str, InstrumentDefinition], check: _Checker
) -> dict[str, Any]:
    allowed = {
        "key",
        "kind",
        "name",
        "opens",
        "closes",
        "open_for_days",
        "repeat",
        "reminders",
        "ask",
    }
    check.unknown(wave, allowed, where)
    wave = wave if isinstance(wave, dict) else {}
    kind = check.need(wave, "kind", where)
    if kind and kind not in WAVE_KINDS:
        check.problems.append(f"{where}.kind: {kind!r} is not one of {list(WAVE_KINDS)}")
    opens = _when(wave.get("opens"), tz, f"{where}.opens", check)
    days = _open_for_days(wave, where, check)
    closes: dt.datetime | None = None
    if days is None:
        closes = _when(wave.get("closes"), tz, f"{where}.closes", check)
    elif opens:
        closes = _after_days(opens, days, tz)
    if opens and closes and closes <= opens:
        check.problems.append(f"{where}.closes: must be after opens")
    reminders = wave.get("reminders") or {}
    after = reminders.get("after_days", []) if isinstance(reminders, dict) else None
    if not isinstance(after, list) or not all(isinstance(d, int | float) and d > 0 for d in after):
        check.problems.append(f"{where}.reminders.after_days: expected a list of positive days")
        after = []
    asks = []
    for a_index, ask in enumerate(check.need(wave, "ask", where, list) or []):
        a_where = f"{where}.ask[{a_index}]"
        check.unknown(ask, {"instrument", "roles", "channel", "subjects", "raters", "sms"}, a_where)
        name = check.need(ask, "instrument", a_where)
        if name and name not in library:
            check.problems.append(f"{a_where}.instrument: unknown instrument {name!r}")
        channel = ask.get("channel") if isinstance(ask, dict) else None
        if channel is not None and channel not in CHANNELS:
            check.problems.append(f"{a_where}.channel: {channel!r} is not one of {list(CHANNELS)}")
        audience = _audience(ask if isinstance(ask, dict) else {}, a_where, check)
        sms_mode = ask.get("sms") if isinstance(ask, dict) else None
        if sms_mode is not None and sms_mode not in SMS_MODES:
            check.problems.append(f"{a_where}.sms: {sms_mode!r} is not one of {list(SMS_MODES)}")
        asks.append(
            {"instrument": name, "channel": channel, "audience": audience, "sms_mode": sms_mode}
        )
    return {
        "key": check.need(wave, "key", where),
        "kind": kind,
        "name": wave.get("name") or str(wave.get("key", "")).replace("_", " ").title(),
        "opens": opens,
        "closes": closes,
        "reminders": {"after_days": after, "max": reminders.get("max", len(after))}
        if isinstance(reminders, dict)
        else {},
        "asks": asks,
        "open_for_days": days,
    }


def _open_for_days(wave: dict[str, Any], where: str, check: _Checker) -> float | None:
    """`open_for_days`, which stands in for `closes`; None when the wave gives `closes`."""
    days = wave.get("open_for_days")
    if days is None:
        if "repeat" in wave:
            check.problems.append(f"{where}.open_for_days: a repeating wave needs open_for_days")
        return None
    if "closes" in wave:
        check.problems.append(f"{where}.closes: give closes or open_for_days, not both")
    if isinstance(days, bool) or not isinstance(days, int | float) or days <= 0:
        check.problems.append(f"{where}.open_for_days: expected a positive number of days")
        return None
    return float(days)


def _after_days(opens: dt.datetime, days: float, tz: ZoneInfo) -> dt.datetime:
    """`days` calendar days after `opens`, at the same local time (across clock changes)."""
    local = opens.astimezone(tz).replace(tzinfo=None) + dt.timedelta(days=days)
    return local.replace(tzinfo=tz).astimezone(dt.UTC)


REPEAT_EVERY = {"week": rrule.WEEKLY, "month": rrule.MONTHLY}
MAX_OCCURRENCES = 120
_WEEKDAYS = {
    name: day
    for day, names in enumerate(
        [
            ("monday", "mon"),
            ("tuesday", "tue", "tues"),
            ("wednesday", "wed"),
            ("thursday", "thu", "thur", "thurs"),
            ("friday", "fri"),
            ("saturday", "sat"),
            ("sunday", "sun"),
        ]
    )
    for name in names
}
_ORDINALS = {
    "first": 1,
    "1st": 1,
    "second": 2,
    "2nd": 2,
    "third": 3,
    "3rd": 3,
    "fourth": 4,
    "4th": 4,
    "last": -1,
}


def _repeat_on(every: str, on: Any, where: str, check: _Checker) -> dict[str, Any] | None:
    """rrule arguments for `on`: "tuesday" (weekly), "first tuesday" or 15 (monthly)."""
    if on is None:
        return {}
    if every == "month" and isinstance(on, int) and not isinstance(on, bool):
        if 1 <= on <= 28:
            return {"bymonthday": on}
        check.problems.append(f"{where}: day {on} is not in every month; use 1 to 28")
        return None
    words = str(on).strip().lower().split() if isinstance(on, str) else []
    if every == "week" and len(words) == 1 and words[0] in _WEEKDAYS:
        return {"byweekday": _WEEKDAYS[words[0]]}
    if every == "month" and len(words) == 2 and words[0] in _ORDINALS and words[1] in _WEEKDAYS:
        weekday = rrule.weekday(_WEEKDAYS[words[1]])
        return {"byweekday": weekday(_ORDINALS[words[0]])}
    example = '"tuesday"' if every == "week" else '"first tuesday", "last friday" or 15'
    check.problems.append(f"{where}: {on!r} is not a day like {example}")
    return None


def _expand(
    plan: dict[str, Any], wave: Any, where: str, tz: ZoneInfo, check: _Checker
) -> list[dict[str, Any]] | None:
    """A repeating pulse wave's occurrences as wave plans; None for a wave that does not
    repeat (or when the file is wrong: the problems are recorded)."""
    if not isinstance(wave, dict) or "repeat" not in wave:
        return None
    where = f"{where}.repeat"
    repeat = wave["repeat"]
    if plan["kind"] != "pulse":
        check.problems.append(f"{where}: only a pulse wave repeats (kind: pulse)")
        return None
    if not isinstance(repeat, dict):
        check.problems.append(f"{where}: expected a mapping like {{every: month, count: 6}}")
        return None
    check.unknown(repeat, {"every", "on", "count"}, where)
    every = repeat.get("every")
    if every not in REPEAT_EVERY:
        check.problems.append(f"{where}.every: expected one of {list(REPEAT_EVERY)}")
        return None
    count = repeat.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_OCCURRENCES:
        check.problems.append(f"{where}.count: expected a whole number from 1 to {MAX_OCCURRENCES}")
        return None
    on = _repeat_on(every, repeat.get("on"), f"{where}.on", check)
    key = plan["key"]
    if isinstance(key, str) and len(key) > 64 - len("-YYYY-MM-DD"):
        check.problems.append(f"{where}: the key {key!r} is too long for dated occurrences")
    if on is None or not plan["opens"] or plan["open_for_days"] is None or not key:
        return None
    first = plan["opens"].astimezone(tz).replace(tzinfo=None)
    # Local wall-clock dates and times: 09:00 stays 09:00 across the clock changes.
    starts = list(rrule.rrule(REPEAT_EVERY[every], dtstart=first, count=count, **on))
    occurrences = []
    for start in starts:
        opens = start.replace(tzinfo=tz).astimezone(dt.UTC)
        occurrences.append(
            {
                **plan,
                "key": f"{key}-{start:%Y-%m-%d}",
                "name": f"{plan['name']} {start:%-d %b %Y}",
                "opens": opens,
                "closes": _after_days(opens, plan["open_for_days"], tz),
            }
        )
    for earlier, later in zip(occurrences, occurrences[1:], strict=False):
        if earlier["closes"] > later["opens"]:
            check.problems.append(
                f"{where}: {earlier['key']} would still be open when {later['key']} opens;"
                " make open_for_days shorter than the gap between occurrences"
            )
            break
    return occurrences


def _check_unique(values: list[Any], where: str, check: _Checker) -> None:
    seen = set()
    for value in values:
        if value in seen:
            check.problems.append(f"{where}: {value!r} appears more than once")
        seen.add(value)


def load_programme(session: Session, path: str | Path) -> ProgrammeReport:
    """Create or update the programme described by the file at `path` (flushes, no commit)."""
    plan = parse_programme(path)
    library = load_library()
    report = ProgrammeReport(plan["key"])
    programme = session.scalar(select(Programme).where(Programme.key == plan["key"]))
    if programme is None:
        programme = Programme(key=plan["key"], name=plan["name"])
        session.add(programme)
        report.created.append(f"programme {plan['key']}")
    _assign(
        programme,
        report,
        f"programme {plan['key']}",
        name=plan["name"],
        timezone=plan["timezone"],
        anonymity_threshold=plan["anonymity_threshold"],
        settings={**(programme.settings or {}), **plan["settings"]},
    )
    session.flush()
    for cohort_plan in plan["cohorts"]:
        _load_cohort(session, programme, cohort_plan, library, report)
    session.flush()
    return report


def _assign(obj: Any, report: ProgrammeReport, label: str, **values: Any) -> None:
    changed = [k for k, v in values.items() if getattr(obj, k) != v]
    for key in changed:
        setattr(obj, key, values[key])
    if changed and obj.id is not None and label not in report.updated:
        report.updated.append(f"{label} ({', '.join(changed)})")


def _load_cohort(
    session: Session,
    programme: Programme,
    plan: dict[str, Any],
    library: dict[str, InstrumentDefinition],
    report: ProgrammeReport,
) -> None:
    cohort = session.scalar(
        select(Cohort).where(Cohort.programme_id == programme.id, Cohort.key == plan["key"])
    )
    label = f"cohort {plan['key']}"
    if cohort is None:
        cohort = Cohort(programme=programme, key=plan["key"], name=plan["name"])
        session.add(cohort)
        report.created.append(label)
    _assign(cohort, report, label, name=plan["name"], starts_on=plan["starts_on"])
    session.flush()
    homes = [_home(session, h, report) for h in plan["homes"]]
    if {h.id for h in cohort.homes} != {h.id for h in homes}:
        if cohort.homes:
            report.updated.append(f"{label} (homes)")
        cohort.homes = homes
    for wave_plan in plan["waves"]:
        _load_wave(session, cohort, wave_plan, library, report)
    for key, keys in plan["series"].items():
        _prune_series(session, cohort, key, set(keys), report)


def _prune_series(
    session: Session, cohort: Cohort, key: str, keep: set[str], report: ProgrammeReport
) -> None:
    """Delete occurrences of a repeating wave that the file no longer produces, unless
    they already have invitations (those stay, with their answers)."""
    dated = re.compile(rf"^{re.escape(key)}-\d{{4}}-\d{{2}}-\d{{2}}$")
    for wave in session.scalars(select(Wave).where(Wave.cohort_id == cohort.id)).all():
        if not dated.match(wave.key) or wave.key in keep:
            continue
        label = f"wave {cohort.key}/{wave.key}"
        if session.scalar(select(Invitation.id).where(Invitation.wave_id == wave.id).limit(1)):
            report.updated.append(f"{label} kept (no longer in the file, but it has invitations)")
            continue
        session.delete(wave)
        report.updated.append(f"{label} deleted (no longer in the file)")
    session.flush()


def _home(session: Session, plan: dict[str, Any], report: ProgrammeReport) -> CareHome:
    key = normalise_home_key(plan["name"])
    home = session.scalar(select(CareHome).where(CareHome.key == key))
    if home is None:
        home = CareHome(key=key, name=" ".join(plan["name"].split()))
        session.add(home)
        report.created.append(f"care home {home.name}")
    extra = {k: plan[k] for k in ("cqc_location_id", "local_authority") if plan.get(k)}
    _assign(home, report, f"care home {home.name}", **extra)
    session.flush()
    return home


def _load_wave(
    session: Session,
    cohort: Cohort,
    plan: dict[str, Any],
    library: dict[str, InstrumentDefinition],
    report: ProgrammeReport,
) -> None:
    wave = session.scalar(select(Wave).where(Wave.cohort_id == cohort.id, Wave.key == plan["key"]))
    label = f"wave {cohort.key}/{plan['key']}"
    if wave is None:
        wave = Wave(
            cohort=cohort,
            key=plan["key"],
            kind=plan["kind"],
            name=plan["name"],
            opens_at=plan["opens"],
            closes_at=plan["closes"],
        )
        session.add(wave)
        report.created.append(label)
    _assign(
        wave,
        report,
        label,
        kind=plan["kind"],
        name=plan["name"],
        opens_at=plan["opens"],
        closes_at=plan["closes"],
        reminders=plan["reminders"],
    )
    session.flush()
    started = session.scalar(select(Invitation.id).where(Invitation.wave_id == wave.id).limit(1))
    existing = {wi.instrument_version.instrument.key: wi for wi in wave.instruments}
    for ask in plan["asks"]:
        version = ensure_version(session, library[ask["instrument"]])
        current = existing.pop(ask["instrument"], None)
        if current is None:
            wave.instruments.append(
                WaveInstrument(
                    instrument_version=version,
                    audience=ask["audience"],
                    channel=ask["channel"],
                    sms_mode=ask["sms_mode"],
                )
            )
            report.created.append(f"{label} asks {ask['instrument']}")
            continue
        values: dict[str, Any] = {
            "audience": ask["audience"],
            "channel": ask["channel"],
            "sms_mode": ask["sms_mode"],
        }
        if not started:  # a wave under way keeps the wording its answers were given to
            values["instrument_version_id"] = version.id
        _assign(current, report, f"{label} asks {ask['instrument']}", **values)
    for key, leftover in existing.items():
        if started:
            raise ProgrammeError(str(label), [f"{key}: cannot be removed, invitations were sent"])
        wave.instruments.remove(leftover)
        report.updated.append(f"{label} no longer asks {key}")
