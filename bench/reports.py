"""Benchmark of the evaluator report at about 1,000,000 answers, against reading them.

`reports.service.build_report` is timed against reading the answers table into pandas,
both in the same run on the same database.

    scripts/with-postgres .venv/bin/python bench/reports.py
    scripts/with-postgres .venv/bin/python bench/reports.py --profile
    .venv/bin/python bench/reports.py --database-url postgresql+psycopg://... --reuse

1. Set-up: migrates the PostgreSQL database (`CAREPULSE_PG_URL`, set by scripts/with-postgres,
   or `--database-url`; it must be empty, or pass --reset to DROP every table) and writes a
   synthetic programme with psycopg COPY: 100 care homes of 30 people (a registered manager
   and 29 staff), one cohort, four waves (baseline, midpoint, end, follow_up), all three
   instruments of the library (stored with `surveys.catalogue.ensure_version`), a status
   history for every invitation, responses and answers. The homes belong to `--groups`
   provider groups (default 7, of 14-15 homes): every staff member rates each manager of
   their group in the 360, and the managers of a group rate each other (the group's lead
   manager as line manager). That is the lever that brings the programme to about
   1,000,000 answers; see `programme_invitations` and docs/benchmarks.md. Then VACUUM
   ANALYZE.
2. Baseline: `pd.read_sql("select * from answers", conn)`, in a fresh process.
3. Frames: `reports.frames` invitations_frame, answers_frame and items_frame (the data
   `build_report` starts from), in a fresh process.
4. Report: `build_report(session, ReportRequest("bench"))`, in a fresh process.
   Each measurement runs `--repeats` times (default 3, interleaved); the median is reported.
   Peak memory is the child's ru_maxrss minus its ru_maxrss after imports and connecting
   (the set-up runs in a child of its own, so no child inherits its peak; VmHWM is
   printed as a cross-check).
5. Targets: report time / read time < 3, report peak memory < 1 GB. Exit status 0 when
   every measurement ran and the frames hold every row the set-up wrote, 1 when not;
   with --check, 3 when either target is missed.

`--profile` adds one more report run under cProfile and prints the functions that dominate,
and the cumulative time of every reports.* function.
`--reuse` measures a database a previous run set up (no set-up, no reset).
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import math
import os
import platform
import resource
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path and its name would hide the
# `reports` package: the project's root goes first, whatever PYTHONPATH says.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402  (after the path fix above)
import pandas as pd  # noqa: E402

from bench.database import (  # noqa: E402  (after the path fix above)
    migrate_fresh,
    psycopg_url,
    server_version,
    vacuum_analyze,
)

PROGRAMME_KEY = "bench"
RATIO_TARGET = 3.0
MEMORY_TARGET_MB = 1024.0
STAFF_MIX = (
    ("deputy_manager", 1),
    ("nurse", 3),
    ("senior_care_worker", 5),
    ("care_worker", 17),
    ("ancillary", 3),
)
"""The 29 staff of every home (with the registered manager, 30 people)."""
RATER_ROLES = ("deputy_manager", "nurse", "senior_care_worker", "care_worker")
"""Staff who rate managers in the 360 (as in examples/programme.yaml: not ancillary)."""
WAVES = (
    ("baseline", dt.datetime(2025, 1, 6, 9, tzinfo=dt.UTC), 0.0),
    ("midpoint", dt.datetime(2025, 7, 7, 9, tzinfo=dt.UTC), 0.15),
    ("end", dt.datetime(2026, 1, 5, 9, tzinfo=dt.UTC), 0.30),
    ("follow_up", dt.datetime(2026, 7, 6, 9, tzinfo=dt.UTC), 0.25),
)
"""(key and kind, opens at, mean improvement on the 1-5 scale over baseline)."""
OPEN_FOR = dt.timedelta(days=18, hours=11)
INSTRUMENTS = ("manager_self_report", "appraisal_360", "staff_morale")
ASKS: dict[str, tuple[dict[str, Any], str | None, str | None]] = {
    "manager_self_report": ({"roles": ["manager"]}, "email", None),
    "appraisal_360": (
        {
            "subject_role": "manager",
            "raters": {
                "self": ["manager"],
                "staff": list(RATER_ROLES),
                "line_manager": ["manager"],
                "peer": ["manager"],
            },
        },
        None,
        "link",
    ),
    "staff_morale": ({"roles": [role for role, _ in STAFF_MIX]}, "sms", "conversation"),
}
"""What every wave asks, of whom (audience), by which channel and SMS mode. The 360's
peers and line managers are managers of other homes, which the app's `open_wave` (same
home only) would not pair: the invitations are written by the benchmark itself."""


# --------------------------------------------------------------------------- the programme


def roster(homes: int, groups: int, rng: np.random.Generator) -> pd.DataFrame:
    """One row per person: id, home (0-based), role, provider group, dates on the roster,
    and the hidden traits the answers are drawn from (leniency, engagement; for managers
    quality and responsiveness to the programme).

    Staff turnover: 20% of staff leave during the programme and 15% join after baseline,
    so each wave asks a different roster; managers stay throughout.
    """
    roles = ["manager"] + [role for role, n in STAFF_MIX for _ in range(n)]
    people = pd.DataFrame(
        {
            "home": np.repeat(np.arange(homes), len(roles)),
            "role": np.tile(roles, homes),
        }
    )
    n = len(people)
    people.insert(0, "id", np.arange(1, n + 1))
    # Homes split into `groups` provider groups as evenly as possible, in home order.
    people["group"] = people["home"] * groups // homes
    people["leniency"] = rng.normal(0, 0.45, n)
    people["engagement"] = rng.normal(0, 1, n)
    people["quality"] = rng.normal(0, 0.4, n)
    people["responsiveness"] = rng.normal(1, 0.6, n)
    first, last = WAVES[0][1].date(), WAVES[-1][1].date()
    span = (last - first).days
    start = first - dt.timedelta(days=1)
    joined = [start - dt.timedelta(days=int(d)) for d in rng.integers(30, 3650, n)]
    people["active_from"] = joined
    people["active_to"] = None
    staff = (people["role"] != "manager").to_numpy()
    u = rng.random(n)
    leavers = np.flatnonzero(staff & (u < 0.20))
    joiners = np.flatnonzero(staff & (u >= 0.20) & (u < 0.35))
    days = rng.integers(1, span, n)
    people.loc[leavers, "active_to"] = [first + dt.timedelta(days=int(d)) for d in days[leavers]]
    people.loc[joiners, "active_from"] = [first + dt.timedelta(days=int(d)) for d in days[joiners]]
    return people


def programme_invitations(people: pd.DataFrame) -> pd.DataFrame:
    """Every invitation of every wave: who answers what, about whom, in which relation.

    Per wave, for the people on the roster on its opening day:
    - manager_self_report: each registered manager (email);
    - appraisal_360: each manager about themself (`self`); each manager about every other
      manager of their provider group (`line_manager` when the rater is the group's lead,
      the manager of its first home, otherwise `peer`); each rating staff member about
      every manager of their provider group (`staff`), their own and the others;
    - staff_morale: every staff member (SMS).
    With one group per home this is the example programme's plain structure.
    """
    frames = []
    for wave, opens, _ in WAVES:
        day = opens.date()
        on_roster = people[
            (people["active_from"] <= day)
            & people["active_to"].map(lambda left, day=day: left is None or day < left)
        ]
        managers = on_roster[on_roster["role"] == "manager"][["id", "home", "group"]]
        staff = on_roster[on_roster["role"] != "manager"][["id", "home", "group", "role"]]
        raters = staff[staff["role"].isin(RATER_ROLES)]
        pairs = managers.merge(managers, on="group", suffixes=("", "_subject"))
        pairs = pairs[pairs["id"] != pairs["id_subject"]]
        first_home = people.groupby("group")["home"].min()
        lead = (pairs["home"] == pairs["group"].map(first_home)).to_numpy()
        rated = raters.merge(managers, on="group", suffixes=("", "_subject"))
        parts = [
            _asked(managers, "manager_self_report", None, None, True),
            _asked(managers, "appraisal_360", managers["id"], "self", True),
            _asked(
                pairs,
                "appraisal_360",
                pairs["id_subject"],
                np.where(lead, "line_manager", "peer"),
                False,
            ),
            _asked(
                rated,
                "appraisal_360",
                rated["id_subject"],
                "staff",
                rated["home"] == rated["home_subject"],
            ),
            _asked(staff, "staff_morale", None, None, True),
        ]
        for part in parts:
            part["wave"] = wave
        frames.extend(parts)
    invitations = pd.concat(frames, ignore_index=True)
    invitations.insert(0, "id", np.arange(1, len(invitations) + 1))
    return invitations


def _asked(
    who: pd.DataFrame, instrument: str, subject: Any, relation: Any, own: Any
) -> pd.DataFrame:
    """Invitations of `who` to `instrument`; `own` is True when the rater knows the subject
    day to day (their own manager, themself, their home)."""
    return pd.DataFrame(
        {
            "person_id": who["id"].to_numpy(),
            "instrument": instrument,
            "subject_person_id": pd.array(
                subject.to_numpy() if subject is not None else [None] * len(who), dtype="Int64"
            ),
            "rater_relation": relation,
            "own": np.broadcast_to(np.asarray(own), (len(who),)),
        }
    )


def _utc(values: np.ndarray) -> pd.Series:
    """numpy datetimes (UTC, naive) as a time-zone-aware pandas column, NaT kept."""
    return pd.Series(values).dt.tz_localize("UTC")


def fates(
    invitations: pd.DataFrame,
    people: pd.DataFrame,
    items: dict[str, list[tuple[str, bool]]],
    rng: np.random.Generator,
) -> pd.DataFrame:
    """What became of each invitation (every wave has closed): channel, final status, the
    time of each step, and how many items were answered.

    Managers are asked by email (no delivery receipts), staff by SMS. About two thirds
    complete, more for their own manager or home than for another home's manager, fewer at
    follow-up and fewer among disengaged people; of the rest a quarter start and stop
    part-way, and by SMS some fail or opt out; the others expire unanswered.
    """
    inv = invitations
    n = len(inv)
    person = people.set_index("id")
    email = (person["role"].reindex(inv["person_id"]) == "manager").to_numpy()
    inv["channel"] = np.where(email, "email", "sms")
    engagement = person["engagement"].reindex(inv["person_id"]).to_numpy()
    logit = np.where(inv["own"], 1.4, 0.8) - 0.3 * (inv["wave"] == "follow_up").to_numpy()
    completed = rng.random(n) < 1 / (1 + np.exp(-(logit + 0.9 * engagement)))
    n_items = inv["instrument"].map({k: len(v) for k, v in items.items()}).to_numpy()
    v = rng.random(n)
    part_way = ~completed & (v < 0.25) & (n_items > 1)
    failed = ~completed & ~part_way & (v >= 0.25) & (v < 0.33) & ~email
    opted_out = ~completed & ~part_way & (v >= 0.33) & (v < 0.40) & ~email
    inv["status"] = np.select(
        [completed, failed, opted_out], ["completed", "failed", "opted_out"], "expired"
    )
    second = np.timedelta64(1, "s")
    opens = inv["wave"].map({w: np.datetime64(o.replace(tzinfo=None)) for w, o, _ in WAVES})
    opens = opens.to_numpy().astype("datetime64[s]")
    closes = opens + int(OPEN_FOR.total_seconds()) * second
    window = int(OPEN_FOR.total_seconds()) - 3 * 3600
    sent = opens + rng.integers(0, 7200, n) * second  # the sending window's first hours
    started = completed | part_way
    inv["delivered"] = ~email & ~failed & (started | (rng.random(n) < 0.97))
    delivered = sent + rng.integers(3, 90, n) * second
    wait = np.minimum(rng.exponential(2 * 86400, n), window).astype(int)
    began = delivered + wait * second
    answered = np.where(completed, n_items, 0)
    answered[part_way] = rng.integers(1, n_items[part_way])
    per_item = rng.integers(8, 40, n)
    finished = np.select(
        [completed, failed, opted_out],
        [
            began + (answered * per_item) * second,
            sent + 20 * second,
            delivered + np.minimum(rng.exponential(86400, n), window).astype(int) * second,
        ],
        closes,
    )
    inv["created_at"], inv["sent_at"], inv["delivered_at"] = opens, sent, delivered
    inv["started"], inv["started_at"], inv["finished_at"] = started, began, finished
    inv["answered"], inv["per_item"] = answered, per_item
    return inv


def events(inv: pd.DataFrame) -> pd.DataFrame:
    """The status history: pending, sent, delivered (SMS receipts), started, and the final
    status, in order, one row per change (the funnel's `reached_*` comes from these)."""
    steps = [
        ("pending", np.ones(len(inv), bool), inv["created_at"]),
        ("sent", np.ones(len(inv), bool), inv["sent_at"]),
        ("delivered", inv["delivered"].to_numpy(), inv["delivered_at"]),
        ("started", inv["started"].to_numpy(), inv["started_at"]),
        (None, np.ones(len(inv), bool), inv["finished_at"]),
    ]
    parts = []
    for status, mask, at in steps:
        parts.append(
            pd.DataFrame(
                {
                    "invitation_id": inv["id"].to_numpy()[mask],
                    "status": inv["status"].to_numpy()[mask] if status is None else status,
                    "at": np.asarray(at)[mask],
                }
            )
        )
    history = pd.concat(parts, ignore_index=True)
    history = history.sort_values("invitation_id", kind="stable", ignore_index=True)
    history.insert(0, "id", np.arange(1, len(history) + 1))
    history["at"] = _utc(history["at"].to_numpy())
    return history


def responses_and_answers(
    inv: pd.DataFrame,
    people: pd.DataFrame,
    items: dict[str, list[tuple[str, bool]]],
    rng: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A response for every started invitation and its answers, item by item in order.

    A value is 3.5 plus the item's own level, the rater's leniency, the quality of the
    manager concerned (the subject of a 360; the manager themself for the self-report; the
    home's manager for morale; halved when the rater sees them from another home), the
    wave's improvement times that manager's responsiveness, +0.35 for rating oneself, and
    noise per invitation and per answer, rounded into 1-5; reverse-scored items are
    mirrored. 2% of items are skipped (NULL), 10% when rating another home's manager.
    """
    started = inv[inv["started"]].reset_index(drop=True)
    morale_by_sms = (started["instrument"] == "staff_morale") & (started["channel"] == "sms")
    channel = np.where(morale_by_sms, "sms", "web")  # SMS conversation, else the web form
    responses = pd.DataFrame(
        {
            "id": np.arange(1, len(started) + 1),
            "invitation_id": started["id"],
            "channel": channel,
            "started_at": _utc(started["started_at"].to_numpy()),
            "completed_at": _utc(
                np.where(
                    started["status"] == "completed",
                    started["finished_at"].to_numpy(),
                    np.datetime64("NaT"),
                )
            ),
        }
    )
    counts = started["answered"].to_numpy()
    row = np.repeat(np.arange(len(started)), counts)
    position = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    codes = {key: i for i, key in enumerate(items)}
    offsets = np.cumsum([0] + [len(items[k]) for k in items])[:-1]
    item_ids = np.array([item_id for k in items for item_id, _ in items[k]])
    reverse = np.array([rev for k in items for _, rev in items[k]])
    item_level = rng.normal(0, 0.3, len(item_ids))
    which = offsets[started["instrument"].map(codes).to_numpy()[row]] + position

    level = _levels(started, people, rng)
    own = started["own"].to_numpy()
    values = np.clip(np.rint(level[row] + item_level[which] + rng.normal(0, 0.75, len(row))), 1, 5)
    values = np.where(reverse[which], 6 - values, values).astype(int)
    skipped = rng.random(len(row)) < np.where(own[row], 0.02, 0.10)
    second = np.timedelta64(1, "s")
    answered_at = (
        started["started_at"].to_numpy()[row]
        + (position * started["per_item"].to_numpy()[row]) * second
    )
    answers = pd.DataFrame(
        {
            "id": np.arange(1, len(row) + 1),
            "response_id": responses["id"].to_numpy()[row],
            "item_id": item_ids[which],
            "value": pd.array(np.where(skipped, None, values), dtype="Int64"),
            "channel": channel[row],
            "answered_at": _utc(answered_at),
        }
    )
    return responses, answers


def _levels(started: pd.DataFrame, people: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    """Each started invitation's expected answer before the item's own level and the
    per-answer noise (see `responses_and_answers`)."""
    person = people.set_index("id")
    home_manager = people[people["role"] == "manager"].set_index("home")["id"]
    rater_home = person["home"].reindex(started["person_id"]).to_numpy()
    is_manager = (person["role"].reindex(started["person_id"]) == "manager").to_numpy()
    # Whose leadership the answer is about: the 360's subject; for the self-report the
    # manager themself; for morale the manager of the rater's home.
    target = np.where(
        started["subject_person_id"].notna(),
        started["subject_person_id"].fillna(0).to_numpy(int),
        np.where(is_manager, started["person_id"], home_manager.reindex(rater_home).to_numpy()),
    )
    own = started["own"].to_numpy()
    shift = started["wave"].map({w: s for w, _, s in WAVES}).to_numpy()
    return (
        3.5
        + person["leniency"].reindex(started["person_id"]).to_numpy()
        + person["quality"].reindex(target).to_numpy() * np.where(own, 1.0, 0.5)
        + shift * person["responsiveness"].reindex(target).to_numpy()
        + 0.35 * (started["rater_relation"] == "self").to_numpy()
        + rng.normal(0, 0.3, len(started))
    )


def _copy(cursor: Any, table: str, frame: pd.DataFrame) -> None:
    """Write `frame` into `table` with COPY ... FROM STDIN (CSV: an empty field is NULL)."""
    frame = frame.copy()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            # numpy formats times ten times faster than to_csv does, one by one.
            naive = frame[column].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
            text = np.char.add(np.datetime_as_string(naive, unit="s"), "+00")
            frame[column] = np.where(np.isnat(naive), None, text)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, header=False)
    columns = ", ".join(frame.columns)
    with cursor.copy(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)") as copy:
        copy.write(buffer.getvalue())


def _declare_programme(session: Any, homes: int) -> dict[str, Any]:
    """Homes, the programme, its cohort, waves and wave instruments, through the ORM (a
    few hundred rows); the instruments are the library's, stored by `ensure_version`."""
    from storage.models import CareHome, Cohort, Programme, Wave, WaveInstrument
    from surveys.catalogue import ensure_version
    from surveys.instruments import load_library

    library = load_library()
    versions = {key: ensure_version(session, library[key]) for key in INSTRUMENTS}
    care_homes = [
        CareHome(key=f"bench home {h:03d}", name=f"Bench Home {h:03d}", local_authority="Brent")
        for h in range(homes)
    ]
    programme = Programme(
        key=PROGRAMME_KEY,
        name="Bench leadership programme",
        timezone="Europe/London",
        anonymity_threshold=5,
        settings={"min_raters": {"staff": 5, "peer": 3, "line_manager": 1}},
    )
    cohort = Cohort(programme=programme, key="cohort-1", name="Cohort 1", homes=care_homes)
    for key, opens, _ in WAVES:
        wave = Wave(
            cohort=cohort,
            key=key,
            kind=key,
            name=key.replace("_", " ").capitalize(),
            opens_at=opens,
            closes_at=opens + OPEN_FOR,
            opened_at=opens,
            reminders={"after_days": [2, 5], "max": 2},
        )
        for instrument, (audience, channel, sms_mode) in ASKS.items():
            wave.instruments.append(
                WaveInstrument(
                    instrument_version=versions[instrument],
                    audience=audience,
                    channel=channel,
                    sms_mode=sms_mode,
                )
            )
    session.add(programme)
    session.flush()
    return {
        "home_ids": [home.id for home in care_homes],
        "wave_ids": {wave.key: wave.id for wave in cohort.waves},
        "version_ids": {key: version.id for key, version in versions.items()},
        "items": {
            key: [(item.id, item.reverse) for item in library[key].items] for key in INSTRUMENTS
        },
    }


def generate(
    homes: int, groups: int, seed: int, declared: dict[str, Any]
) -> dict[str, pd.DataFrame]:
    """Every bulk table of the synthetic programme, as frames with the tables' columns."""
    rng = np.random.default_rng(seed)
    people = roster(homes, groups, rng)
    inv = fates(programme_invitations(people), people, declared["items"], rng)
    history = events(inv)
    responses, answers = responses_and_answers(inv, people, declared["items"], rng)
    created = _utc(np.full(len(people), np.datetime64("2024-12-02T10:00:00")))
    people_table = pd.DataFrame(
        {
            "id": people["id"],
            "external_id": [f"B{i:06d}" for i in people["id"]],
            "given_name": [f"Person{i}" for i in people["id"]],
            "family_name": "Bench",
            "role": people["role"],
            "care_home_id": np.asarray(declared["home_ids"])[people["home"]],
            "mobile": [f"+4477009{i:05d}" for i in people["id"]],
            "email": [
                f"person{i}@example.org" if role == "manager" else None
                for i, role in zip(people["id"], people["role"], strict=True)
            ],
            "language": "en",
            "active_from": people["active_from"],
            "active_to": people["active_to"],
            "created_at": created,
            "updated_at": created,
        }
    )
    invitations = pd.DataFrame(
        {
            "id": inv["id"],
            "wave_id": inv["wave"].map(declared["wave_ids"]),
            "instrument_version_id": inv["instrument"].map(declared["version_ids"]),
            "person_id": inv["person_id"],
            "subject_person_id": inv["subject_person_id"],
            "rater_relation": inv["rater_relation"],
            "channel": inv["channel"],
            "token": [secrets.token_urlsafe(24) for _ in range(len(inv))],
            "status": inv["status"],
            "created_at": _utc(inv["created_at"].to_numpy()),
            "status_changed_at": _utc(inv["finished_at"].to_numpy()),
        }
    )
    return {
        "people": people_table,
        "invitations": invitations,
        "invitation_events": history,
        "responses": responses,
        "answers": answers,
    }


def _copy_all(engine: Any, tables: dict[str, pd.DataFrame]) -> dict[str, float]:
    """COPY every frame into its table in one transaction; seconds per table."""
    timings: dict[str, float] = {}
    raw = engine.raw_connection()
    try:
        with raw.driver_connection.cursor() as cursor:
            for table, frame in tables.items():
                started = time.perf_counter()
                _copy(cursor, table, frame)
                # Ids were given explicitly: move each sequence past them.
                cursor.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
                timings[f"copy {table}"] = time.perf_counter() - started
        started = time.perf_counter()
        raw.commit()
        timings["commit"] = time.perf_counter() - started
    finally:
        raw.close()
    return timings


def set_up(url: str, homes: int, groups: int, seed: int, reset: bool) -> dict[str, Any]:
    """Migrate, declare the programme, COPY the bulk tables, VACUUM ANALYZE; timings and
    row counts."""
    from storage import db as storage_db

    timings: dict[str, float] = {}
    started = time.perf_counter()
    engine = storage_db.make_engine(url)
    migrate_fresh(
        engine,
        reset,
        "bench: the database already has tables ({tables} ...); "
        "use a fresh one (scripts/with-postgres), --reuse it, or --reset to DROP them all",
    )
    timings["migrate"] = time.perf_counter() - started

    started = time.perf_counter()
    with storage_db.make_sessionmaker(engine)() as session:
        declared = _declare_programme(session, homes)
        session.commit()
    tables_data = generate(homes, groups, seed, declared)
    timings["generate"] = time.perf_counter() - started

    timings.update(_copy_all(engine, tables_data))
    started = time.perf_counter()
    vacuum_analyze(engine)
    timings["vacuum analyze"] = time.perf_counter() - started
    engine.dispose()
    counts = {table: len(frame) for table, frame in tables_data.items()}
    answers = tables_data["answers"]
    counts["answers with a value"] = int(answers["value"].notna().sum())
    return {"timings": timings, "counts": counts}


# --------------------------------------------------------------------------- measurements


def _peak_mb() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _high_water_mb() -> float:
    """The peak RSS of this process's own memory since exec (VmHWM): a cross-check of
    ru_maxrss, which also counts what the parent held when it started this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def measure(kind: str, url: str) -> dict[str, Any]:
    """One measurement in this (fresh) process: `read`, `frames` or `report`.

    Seconds and peak memory cover the measured call only: the imports, the engine and a
    first connection come before the memory baseline is taken and the clock starts.
    """
    from sqlalchemy import text

    from storage import db as storage_db

    engine = storage_db.make_engine(url)
    session = storage_db.make_sessionmaker(engine)()
    if kind == "read":
        conn = session.connection()
        call = lambda: pd.read_sql(text("select * from answers"), conn)  # noqa: E731
    elif kind == "frames":
        from reports.frames import answers_frame, invitations_frame, items_frame

        def call() -> tuple[pd.DataFrame, ...]:
            return (
                invitations_frame(session, PROGRAMME_KEY),
                answers_frame(session, PROGRAMME_KEY),
                items_frame(session, PROGRAMME_KEY),
            )

    elif kind == "report":
        from reports.service import ReportRequest, build_report

        call = lambda: build_report(session, ReportRequest(PROGRAMME_KEY))  # noqa: E731
    else:
        raise SystemExit(f"bench: unknown measurement {kind!r}")
    session.execute(text("select 1"))
    baseline, own_baseline = _peak_mb(), _high_water_mb()
    started, cpu = time.perf_counter(), time.process_time()
    result = call()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = _peak_mb()
    out: dict[str, Any] = {
        "seconds": seconds,
        "cpu": cpu,
        "peak_mb": peak - baseline,
        "baseline_mb": baseline,
        "hwm_peak_mb": _high_water_mb() - own_baseline,
    }
    if kind == "read":
        out["rows"] = len(result)
    elif kind == "frames":
        out["rows"] = {"invitations": len(result[0]), "answers": len(result[1])}
    else:
        out["rows"] = {name: len(table) for name, table in result.tables.items()}
    session.close()
    engine.dispose()
    return out


def _measured(kind: str, url: str, *options: str) -> dict[str, Any] | None:
    """`measure(kind)` (or the set-up) in a fresh Python process; None (and its stderr
    shown) on failure.

    Linux carries a process's peak RSS over fork and exec into the child's ru_maxrss, so
    every child is started from this process, which never holds the generated data.
    """
    here = str(Path(__file__).resolve())
    process = subprocess.run(
        [sys.executable, here, "--measure", kind, "--database-url", url, *options],
        capture_output=True,
        text=True,
        check=False,
    )
    if process.returncode != 0:
        print(f"bench: the {kind} measurement failed:\n{process.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(process.stdout.strip().splitlines()[-1])


def profile_report(url: str, top: int) -> None:
    """One `build_report` under cProfile, in this process: the top functions by own time,
    and the cumulative time of every function of the reports package."""
    import cProfile
    import pstats

    from reports.service import ReportRequest, build_report
    from storage import db as storage_db

    engine = storage_db.make_engine(url)
    with storage_db.make_sessionmaker(engine)() as session:
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.runcall(build_report, session, ReportRequest(PROGRAMME_KEY))
        seconds = time.perf_counter() - started
    engine.dispose()
    stats = pstats.Stats(profiler)
    print(f"profile: build_report took {seconds:.1f} s under cProfile")
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((own, cumulative, calls, _where(filename, line, name)))
    total = sum(r[0] for r in rows)
    print(f"profile: top {top} functions by own time (of {total:.1f} s)")
    print(f"{'own s':>8} {'cum s':>8} {'calls':>10}  function")
    for own, cumulative, calls, where in sorted(rows, reverse=True)[:top]:
        print(f"{own:8.2f} {cumulative:8.2f} {calls:10d}  {where}")
    print("profile: reports.* functions by cumulative time (0.05 s and over)")
    ours = [r for r in rows if r[3].startswith("reports/") and r[1] >= 0.05]
    for own, cumulative, calls, where in sorted(ours, key=lambda r: -r[1]):
        print(f"{own:8.2f} {cumulative:8.2f} {calls:10d}  {where}")


def _where(filename: str, line: int, name: str) -> str:
    """A short name for a profiled function: path relative to the project or site-packages."""
    if filename.startswith(str(ROOT) + "/"):
        filename = filename[len(str(ROOT)) + 1 :]
    elif "site-packages/" in filename:
        filename = filename.split("site-packages/", 1)[1]
    return f"{filename}:{line}({name})" if line else name


# --------------------------------------------------------------------------- the run


def machine(url: str) -> str:
    """The facts a reader needs to compare runs: cores, CPU, memory, versions, load."""
    import psycopg
    import sqlalchemy

    server = server_version(url)
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return (
        f"machine: nproc {len(os.sched_getaffinity(0))} ({cpu}), "
        f"{memory_kb / 1024**2:.0f} GB RAM, load average {os.getloadavg()[0]:.2f}; "
        f"Python {platform.python_version()}, PostgreSQL {server}, pandas {pd.__version__}, "
        f"numpy {np.__version__}, SQLAlchemy {sqlalchemy.__version__}, psycopg "
        f"{psycopg.__version__}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("CAREPULSE_PG_URL"))
    parser.add_argument("--homes", type=int, default=100, help="care homes of 30 people")
    parser.add_argument(
        "--groups",
        type=int,
        default=7,
        help="provider groups the homes are split into (default 7: 14-15 homes each; "
        "as many as --homes for the plain structure, one manager rated per staff member)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="also one run under cProfile")
    parser.add_argument("--top", type=int, default=25, help="functions listed by --profile")
    parser.add_argument("--reset", action="store_true", help="DROP every table first")
    parser.add_argument("--reuse", action="store_true", help="measure an existing set-up")
    parser.add_argument("--check", action="store_true", help="exit 3 when a target is missed")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # a child's one measurement
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("no database; run under scripts/with-postgres or give --database-url")
    if not 1 <= args.groups <= args.homes:
        parser.error("--groups must be between 1 and --homes")
    return args


def main(argv: list[str] | None = None) -> int:
    """Set up, measure, print the report; see the module docstring."""
    args = parse_args(argv)
    url = psycopg_url(args.database_url)
    if args.measure == "profile":
        profile_report(url, args.top)
        return 0
    if args.measure == "setup":
        print(json.dumps(set_up(url, args.homes, args.groups, args.seed, args.reset)))
        return 0
    if args.measure:
        print(json.dumps(measure(args.measure, url)))
        return 0
    print(machine(url))
    expected: dict[str, int] = {}
    if not args.reuse:
        started = time.perf_counter()
        options = ["--homes", str(args.homes), "--groups", str(args.groups)]
        options += ["--seed", str(args.seed), *(["--reset"] if args.reset else [])]
        setup = _measured("setup", url, *options)
        if setup is None:
            return 1
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in setup["timings"].items())
        print(f"set-up: {time.perf_counter() - started:.1f} s ({steps})")
        print("rows: " + ", ".join(f"{k} {v:,}" for k, v in setup["counts"].items()))
        expected = {
            "answers": setup["counts"]["answers with a value"],
            "invitations": setup["counts"]["invitations"],
        }
    runs: dict[str, list[dict[str, Any]]] = {"read": [], "frames": [], "report": []}
    failed: set[str] = set()
    for _ in range(args.repeats):  # interleaved, so a noisy minute hits every kind alike
        for kind, done in runs.items():
            if kind not in failed:
                result = _measured(kind, url)
                if result is None:
                    failed.add(kind)
                else:
                    done.append(result)
    verdict = _print(runs, expected)
    if args.profile and "report" not in failed:  # after the measurements, which it would slow
        here = str(Path(__file__).resolve())
        command = [sys.executable, here, "--measure", "profile", "--top", str(args.top)]
        subprocess.run([*command, "--database-url", url], check=False)
    if failed or verdict is None:
        return 1
    return 3 if args.check and not verdict else 0


def _print(runs: dict[str, list[dict[str, Any]]], expected: dict[str, int]) -> bool | None:
    """The table of medians and the verdicts: True when both targets were met, False when
    one was missed, None when the run cannot tell (a measurement failed, or the frames do
    not hold the rows the set-up wrote)."""
    print(f"each measured in a fresh process; median [min-max] of {len(runs['read'])} runs")
    print(f"{'':40} {'seconds':>22} {'CPU s':>7} {'peak MB over baseline':>24}")
    labels = {
        "read": 'read_sql("select * from answers")',
        "frames": "frames (invitations, answers, items)",
        "report": "build_report(session, ReportRequest)",
    }
    medians: dict[str, tuple[float, float]] = {}
    cpu: dict[str, float] = {}
    for kind, results in runs.items():
        if not results:
            print(f"{labels[kind]:40} {'FAILED':>22}")
            continue
        seconds = [r["seconds"] for r in results]
        peaks = [r["peak_mb"] for r in results]
        medians[kind] = (statistics.median(seconds), statistics.median(peaks))
        cpu[kind] = statistics.median(r["cpu"] for r in results)
        print(
            f"{labels[kind]:40} {medians[kind][0]:8.2f} [{min(seconds):5.2f}-{max(seconds):5.2f}]"
            f"{cpu[kind]:8.2f}{medians[kind][1]:10.0f} [{min(peaks):4.0f}-{max(peaks):4.0f}]"
        )
    valid = _frames_valid(runs, expected)
    if len(medians) < len(runs) or not valid:
        return None
    baseline = statistics.median(r["baseline_mb"] for r in runs["report"])
    apart = max(abs(r["peak_mb"] - r["hwm_peak_mb"]) for rs in runs.values() for r in rs)
    print(
        f"(the report process held {baseline:.0f} MB after imports, not counted above; "
        f"ru_maxrss and VmHWM agree within {apart:.0f} MB)"
    )
    tables = runs["report"][-1]["rows"]
    print("report tables (rows): " + ", ".join(f"{k} {v}" for k, v in tables.items()))
    ratio = medians["report"][0] / medians["read"][0]
    peak = medians["report"][1]
    share = medians["frames"][0] / medians["report"][0]
    print(f"frames / report time: {share:.0%} (the rest: statistics, disclosure, rounding)")
    ratio_met, peak_met = ratio < RATIO_TARGET, peak < MEMORY_TARGET_MB
    # CPU of the measuring process only (not PostgreSQL's): steadier on a shared machine.
    print(
        f"CPU ratio report / read: {cpu['report'] / cpu['read']:.2f}x; load average "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    print(
        f"ratio report / read: {ratio:.2f}x (target < {RATIO_TARGET:g}x: "
        f"{'MET' if ratio_met else 'MISSED'})"
    )
    print(
        f"report peak memory: {peak:.0f} MB (target < {MEMORY_TARGET_MB:.0f} MB: "
        f"{'MET' if peak_met else 'MISSED'})"
    )
    return ratio_met and peak_met


def _frames_valid(runs: dict[str, list[dict[str, Any]]], expected: dict[str, int]) -> bool:
    """Whether the frames hold every invitation and every answer with a value that the
    set-up wrote (unknown with --reuse: then only printed)."""
    if not runs["frames"]:
        return False
    rows = runs["frames"][-1]["rows"]
    read = runs["read"][-1]["rows"] if runs["read"] else 0
    print(
        f"rows: read_sql {read:,} answers; frames {rows['invitations']:,} invitations, "
        f"{rows['answers']:,} answers with a value"
    )
    if expected and rows != expected:
        print(f"INVALID: the set-up wrote {expected}", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
