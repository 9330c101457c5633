"""The instrument library: survey questionnaires kept as data, and their validating loader.

Each ``*.yaml`` file in this package defines one instrument (its items, response scales,
subscales and wording for the web form and for SMS). :func:`load_instrument` reads one file
and checks it thoroughly, reporting every problem at once in an :class:`InstrumentError`;
:func:`load_library` loads the whole folder.

This module is pure Python: it imports nothing from Flask or SQLAlchemy (only the shared
vocabulary of roles and relations), so the survey engine and the bot can use it alike.

Item wording may come in two phrasings (for a 360-degree appraisal): ``others`` (a staff
member, line manager or peer rating the manager, "My manager ...") and ``self`` (the manager
rating themself, "I ..."). Single-phrasing items have one text used for every rater.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from storage.vocabulary import RATER_RELATIONS as RELATIONS
from storage.vocabulary import ROLES, STAFF_ROLES

__all__ = [
    "DEFAULT_PHRASING",
    "GSM7_BASIC_CHARS",
    "LIBRARY_DIR",
    "RELATIONS",
    "ROLES",
    "SMS_MAX_CHARS",
    "SMS_SEGMENT_CHARS",
    "STAFF_ROLES",
    "InstrumentDefinition",
    "InstrumentError",
    "Item",
    "ItemGroup",
    "Problem",
    "ResponseScale",
    "load_instrument",
    "load_library",
    "reverse_score",
]


DEFAULT_PHRASING = "default"
"""Key of the only phrasing of a single-phrasing item in :attr:`Item.text` / :attr:`Item.sms`."""

_DUAL_PHRASINGS = ("others", "self")

SMS_MAX_CHARS = 100
"""Longest SMS question text, leaving room for a "Reply 1-5 (...)" hint in one SMS."""

SMS_SEGMENT_CHARS = 160
"""Characters in one GSM-7 SMS segment."""

GSM7_BASIC_CHARS = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
"""The GSM 03.38 basic character set (without the escape to the extension table).

Text made only of these characters is sent as GSM-7, 160 characters per SMS; a single
character outside it (a curly quote, a dash) makes the whole message UCS-2, 70 per SMS.
"""

LIBRARY_DIR = Path(__file__).resolve().parent
"""The folder holding the project's instrument files."""

_SNAKE_CASE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")

_TOP_REQUIRED = (
    "key",
    "version",
    "title",
    "description",
    "audience",
    "source",
    "design_notes",
    "response_scales",
    "items",
    "scales",
)
_TOP_OPTIONAL = ("groups",)
_ITEM_REQUIRED = ("id", "tender_wording", "text", "sms", "scale", "reverse")
_ITEM_OPTIONAL = ("group",)
_SCALE_REQUIRED = ("min", "max", "labels")
_GROUP_REQUIRED = ("tender_wording", "text")


class Problem(NamedTuple):
    """One thing wrong with an instrument definition."""

    file: str
    """The file (or other source) the definition came from."""
    field: str
    """Path of the offending field, e.g. ``items[3].scale`` (list indexes count from 0)."""
    reason: str
    """What is wrong, in plain words."""

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.reason}"


class InstrumentError(ValueError):
    """An instrument definition (or a library of them) is invalid.

    The message names the file, the field path and the reason for every problem found,
    one per line; :attr:`problems` holds them as :class:`Problem` tuples.
    """

    def __init__(self, source: str, problems: Iterable[Problem]) -> None:
        self.source = source
        self.problems: tuple[Problem, ...] = tuple(problems)
        count = len(self.problems)
        header = f"{source}: invalid instrument definition ({count} problem"
        header += "s):" if count != 1 else "):"
        super().__init__("\n".join([header, *(f"  {p}" for p in self.problems)]))


@dataclass(frozen=True)
class ResponseScale:
    """A named integer answer scale, e.g. 1 "Very low" ... 5 "Very high"."""

    name: str
    min: int
    max: int
    labels: dict[int, str]
    """Labels for some (at least both ends) of the values ``min..max``."""

    @property
    def values(self) -> range:
        """Every allowed answer, lowest first."""
        return range(self.min, self.max + 1)

    def label(self, value: int) -> str | None:
        """The label of `value`, or None when that point is unlabelled."""
        return self.labels.get(value)

    def sms_hint(self) -> str:
        """How to answer by SMS, e.g. ``Reply 1-5 (1=Very low, 5=Very high)``."""
        low, high = self.labels[self.min], self.labels[self.max]
        return f"Reply {self.min}-{self.max} ({self.min}={low}, {self.max}={high})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (label keys become strings)."""
        return {
            "min": self.min,
            "max": self.max,
            "labels": {str(k): v for k, v in sorted(self.labels.items())},
        }


@dataclass(frozen=True)
class ItemGroup:
    """A heading shared by several items (e.g. the tender's "in particular:" lists)."""

    id: str
    tender_wording: str
    text: str


@dataclass(frozen=True)
class Item:
    """One question.

    `text` and `sms` map a phrasing to wording: either ``{"default": ...}`` for a
    single-phrasing item, or ``{"others": ..., "self": ...}`` for a 360-degree item.
    """

    id: str
    tender_wording: str
    text: dict[str, str]
    sms: dict[str, str]
    scale: ResponseScale
    reverse: bool
    group: str | None = None

    @property
    def has_self_phrasing(self) -> bool:
        """Whether the item has separate wording for a manager rating themself."""
        return "self" in self.text

    def text_for(self, relation: str | None = "staff") -> str:
        """The web-form wording for a rater with this `relation` (see :data:`RELATIONS`)."""
        return self.text[_phrasing_key(self.text, relation)]

    def sms_for(self, relation: str | None = "staff") -> str:
        """The SMS wording for a rater with this `relation` (see :data:`RELATIONS`)."""
        return self.sms[_phrasing_key(self.sms, relation)]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form, the same shape as an item in an instrument file."""
        data: dict[str, Any] = {
            "id": self.id,
            "tender_wording": self.tender_wording,
            "text": _phrasings_to_data(self.text),
            "sms": _phrasings_to_data(self.sms),
            "scale": self.scale.name,
            "reverse": self.reverse,
        }
        if self.group is not None:
            data["group"] = self.group
        return data


@dataclass(frozen=True)
class InstrumentDefinition:
    """One validated instrument. Build with :func:`load_instrument` or :meth:`from_dict`."""

    key: str
    version: int
    title: str
    description: str
    audience: tuple[str, ...]
    source: str
    design_notes: str
    response_scales: dict[str, ResponseScale]
    scales: dict[str, tuple[str, ...]]
    """Subscales: name -> ids of the items averaged together."""
    items: tuple[Item, ...]
    groups: dict[str, ItemGroup]

    @property
    def item_ids(self) -> tuple[str, ...]:
        """Item ids in the order they are asked."""
        return tuple(item.id for item in self.items)

    @property
    def has_self_phrasing(self) -> bool:
        """Whether items are worded separately for self-rating (a 360-degree instrument)."""
        return any(item.has_self_phrasing for item in self.items)

    def item(self, item_id: str) -> Item:
        """The item with id `item_id`; KeyError if there is none."""
        for item in self.items:
            if item.id == item_id:
                return item
        raise KeyError(f"instrument {self.key!r} has no item {item_id!r}")

    def item_text(self, item_id: str, relation: str | None = "staff") -> str:
        """Web-form wording of an item for a rater with `relation`.

        `relation` is one of :data:`RELATIONS`; every relation but ``self`` gets the
        ``others`` phrasing. None (a non-360 invitation) is treated as not-self. A
        single-phrasing item returns its only text whatever the relation.
        """
        return self.item(item_id).text_for(relation)

    def sms_text(self, item_id: str, relation: str | None = "staff") -> str:
        """SMS wording of an item for a rater with `relation` (as for :meth:`item_text`)."""
        return self.item(item_id).sms_for(relation)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict in the instrument-file shape; :meth:`from_dict` reverses it."""
        data: dict[str, Any] = {
            "key": self.key,
            "version": self.version,
            "title": self.title,
            "description": self.description,
            "audience": list(self.audience),
            "source": self.source,
            "design_notes": self.design_notes,
            "response_scales": {n: s.to_dict() for n, s in self.response_scales.items()},
            "groups": {
                g.id: {"tender_wording": g.tender_wording, "text": g.text}
                for g in self.groups.values()
            },
            "items": [item.to_dict() for item in self.items],
            "scales": {name: list(ids) for name, ids in self.scales.items()},
        }
        if not self.groups:
            del data["groups"]
        return data

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> InstrumentDefinition:
        """Validate `data` (the shape of an instrument file) and build the definition.

        Raises :class:`InstrumentError` naming `source` and listing every problem.
        """
        return _build(data, source)

    @property
    def content_hash(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`to_dict`.

        Any change to the definition, wording included, changes the hash; storage uses
        it to tell whether an edited file needs a new version.
        """
        canonical = json.dumps(
            self.to_dict(), sort_keys=True, ensure_ascii=False, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def reverse_score(item: Item, value: int) -> int:
    """The score of answer `value` with "higher is better" direction.

    For a reverse-scored item this is ``min + max - value``; otherwise `value` itself.
    Raises ValueError if `value` is not an integer on the item's scale.
    """
    scale = item.scale
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"answer to {item.id!r} must be an integer, not {value!r}")
    if not scale.min <= value <= scale.max:
        raise ValueError(
            f"answer {value} to {item.id!r} is outside its scale {scale.min}-{scale.max}"
        )
    return scale.min + scale.max - value if item.reverse else value


def load_instrument(path: str | os.PathLike[str]) -> InstrumentDefinition:
    """Read and validate one instrument file.

    Raises :class:`InstrumentError` listing every problem (file, field path, reason).
    """
    source = str(path)
    try:
        raw = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InstrumentError(source, [Problem(source, "(file)", f"cannot read: {exc}")]) from exc
    try:
        data = yaml.load(raw, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        reason = "not valid YAML: " + " ".join(str(exc).split())
        raise InstrumentError(source, [Problem(source, "(file)", reason)]) from exc
    return _build(data, source)


def load_library(
    directory: str | os.PathLike[str] | None = None,
) -> dict[str, InstrumentDefinition]:
    """Load every ``*.yaml`` instrument in `directory` (default: this package's folder).

    Returns instruments by key, in file-name order. Raises :class:`InstrumentError` with
    the problems of every invalid file, and for two files defining the same key.
    """
    folder = Path(directory) if directory is not None else LIBRARY_DIR
    if not folder.is_dir():
        raise InstrumentError(str(folder), [Problem(str(folder), "(directory)", "not found")])
    problems: list[Problem] = []
    library: dict[str, InstrumentDefinition] = {}
    origins: dict[str, Path] = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            instrument = load_instrument(path)
        except InstrumentError as exc:
            problems.extend(exc.problems)
            continue
        if instrument.key in origins:
            reason = (
                f"duplicate instrument key {instrument.key!r}, also in {origins[instrument.key]}"
            )
            problems.append(Problem(str(path), "key", reason))
            continue
        library[instrument.key] = instrument
        origins[instrument.key] = path
    if problems:
        raise InstrumentError(str(folder), problems)
    return library


# --------------------------------------------------------------------------- internals


def _phrasing_key(phrasings: Mapping[str, str], relation: str | None) -> str:
    if relation is not None and relation not in RELATIONS:
        raise ValueError(f"unknown rater relation {relation!r}; expected one of {RELATIONS}")
    if DEFAULT_PHRASING in phrasings:
        return DEFAULT_PHRASING
    return "self" if relation == "self" else "others"


def _phrasings_to_data(phrasings: Mapping[str, str]) -> str | dict[str, str]:
    if set(phrasings) == {DEFAULT_PHRASING}:
        return phrasings[DEFAULT_PHRASING]
    return {key: phrasings[key] for key in _DUAL_PHRASINGS}


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key repeated in one mapping (a likely typo)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: construct_mapping reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


class _Checker:
    """Collects problems while a definition is validated."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def add(self, field: str, reason: str) -> None:
        self.problems.append(Problem(self.source, field, reason))

    def keys(
        self,
        data: Mapping[Any, Any],
        path: str,
        required: Iterable[str],
        optional: Iterable[str] = (),
    ) -> None:
        """Report missing required keys and unknown keys of mapping `data`."""
        required = tuple(required)
        allowed = (*required, *optional)
        for key in data:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                reason = "unknown key"
                reason += f" (did you mean {hint[0]!r}?)" if hint else ""
                reason += f"; allowed: {', '.join(allowed)}"
                self.add(_join(path, str(key)), reason)
        for key in required:
            if key not in data:
                self.add(_join(path, key), "required field is missing")

    def text(self, value: Any, path: str, *, tender: bool = False) -> str | None:
        """A non-empty string, or None (after reporting) if `value` is not one."""
        if not isinstance(value, str):
            self.add(path, f"must be a string, not {_type_name(value)}")
            return None
        if not value.strip():
            self.add(path, "must not be empty")
            return None
        if tender and value != value.strip():
            self.add(path, "has leading or trailing whitespace; copy the tender text trimmed")
            return None
        return value

    def integer(self, value: Any, path: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(path, f"must be an integer, not {_type_name(value)}")
            return None
        return value

    def snake_case(self, value: Any, path: str, what: str) -> str | None:
        name = self.text(value, path)
        if name is not None and not _SNAKE_CASE.match(name):
            self.add(path, f"{what} {name!r} must be snake_case (a-z, 0-9 and _)")
            return None
        return name

    def mapping(self, value: Any, path: str) -> Mapping[Any, Any] | None:
        if not isinstance(value, Mapping):
            self.add(path, f"must be a mapping, not {_type_name(value)}")
            return None
        return value

    def sequence(self, value: Any, path: str) -> list[Any] | None:
        if not isinstance(value, list):
            self.add(path, f"must be a list, not {_type_name(value)}")
            return None
        return value

    def gsm7(self, value: str, path: str) -> bool:
        bad = sorted({c for c in value if c not in GSM7_BASIC_CHARS})
        if bad:
            shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in bad)
            self.add(path, f"contains characters outside the GSM-7 SMS alphabet: {shown}")
        return not bad


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _build(data: Any, source: str) -> InstrumentDefinition:
    """Validate `data` and build the definition, or raise with every problem found."""
    c = _Checker(source)
    top = c.mapping(data, "(document)")
    if top is None:
        raise InstrumentError(source, c.problems)
    c.keys(top, "", _TOP_REQUIRED, _TOP_OPTIONAL)

    key = c.snake_case(top.get("key"), "key", "instrument key") if "key" in top else None
    version = c.integer(top["version"], "version") if "version" in top else None
    if version is not None and version < 1:
        c.add("version", f"must be 1 or more, not {version}")
    strings = {
        name: c.text(top[name], name) if name in top else None
        for name in ("title", "description", "source", "design_notes")
    }
    audience = _audience(c, top["audience"]) if "audience" in top else ()
    response_scales = (
        _response_scales(c, top["response_scales"]) if "response_scales" in top else {}
    )
    groups = _groups(c, top["groups"]) if "groups" in top else {}
    items: tuple[Item, ...] = ()
    declared_ids: set[str] = set()
    if "items" in top:
        # Names declared but invalid were reported already: don't call them unknown too.
        declared = {
            section: set(top[section]) if isinstance(top.get(section), Mapping) else set()
            for section in ("response_scales", "groups")
        }
        items, declared_ids, used_groups = _items(
            c, top["items"], response_scales, groups, declared
        )
        for group_id in groups:
            if group_id not in used_groups:
                c.add(f"groups.{group_id}", "no item belongs to this group")
    scales = _subscales(c, top["scales"], declared_ids) if "scales" in top else {}

    if c.problems:
        raise InstrumentError(source, c.problems)
    assert key is not None and version is not None  # guaranteed when there are no problems
    return InstrumentDefinition(
        key=key,
        version=version,
        title=str(strings["title"]),
        description=str(strings["description"]),
        audience=audience,
        source=str(strings["source"]),
        design_notes=str(strings["design_notes"]),
        response_scales=response_scales,
        scales=scales,
        items=items,
        groups=groups,
    )


def _audience(c: _Checker, value: Any) -> tuple[str, ...]:
    roles = c.sequence(value, "audience")
    if roles is None:
        return ()
    if not roles:
        c.add("audience", "must name at least one role")
    seen: set[str] = set()
    for i, role in enumerate(roles):
        path = f"audience[{i}]"
        if not isinstance(role, str) or role not in ROLES:
            c.add(path, f"unknown role {role!r}; roles are: {', '.join(ROLES)}")
        elif role in seen:
            c.add(path, f"role {role!r} is listed twice")
        else:
            seen.add(role)
    return tuple(r for r in roles if isinstance(r, str))


def _response_scales(c: _Checker, value: Any) -> dict[str, ResponseScale]:
    scales = c.mapping(value, "response_scales")
    if scales is None:
        return {}
    if not scales:
        c.add("response_scales", "must define at least one scale")
    result: dict[str, ResponseScale] = {}
    for raw_name, spec in scales.items():
        path = f"response_scales.{raw_name}"
        name = c.snake_case(raw_name, path, "scale name")
        spec = c.mapping(spec, path)
        if name is None or spec is None:
            continue
        c.keys(spec, path, _SCALE_REQUIRED)
        low = c.integer(spec["min"], f"{path}.min") if "min" in spec else None
        high = c.integer(spec["max"], f"{path}.max") if "max" in spec else None
        ok = low is not None and high is not None
        if low is not None and high is not None and low >= high:
            c.add(f"{path}.max", f"max ({high}) must be greater than min ({low})")
            ok = False
        labels = (
            _labels(c, spec["labels"], f"{path}.labels", low, high, ok)
            if "labels" in spec
            else None
        )
        if ok and labels is not None and low is not None and high is not None:
            result[name] = ResponseScale(name=name, min=low, max=high, labels=labels)
    return result


def _labels(
    c: _Checker, value: Any, path: str, low: int | None, high: int | None, bounds_ok: bool
) -> dict[int, str] | None:
    raw = c.mapping(value, path)
    if raw is None:
        return None
    labels: dict[int, str] = {}
    ok = True
    for raw_point, label in raw.items():
        point_path = f"{path}.{raw_point}"
        point: int | None = None
        if isinstance(raw_point, int) and not isinstance(raw_point, bool):
            point = raw_point
        elif isinstance(raw_point, str) and re.fullmatch(r"-?\d+", raw_point):
            point = int(raw_point)  # JSON turns integer keys into strings
        if point is None:
            c.add(point_path, f"label key must be an integer scale point, not {raw_point!r}")
            ok = False
            continue
        if bounds_ok and low is not None and high is not None and not low <= point <= high:
            c.add(point_path, f"label for {point} is outside the scale {low}-{high}")
            ok = False
        text = c.text(label, point_path)
        if text is None or not c.gsm7(text, point_path):
            ok = False
            continue
        labels[point] = text
    if bounds_ok and low is not None and high is not None:
        for end in (low, high):
            if end not in labels and end not in raw and str(end) not in raw:
                c.add(path, f"needs a label for the end point {end}")
                ok = False
    return labels if ok else None


def _groups(c: _Checker, value: Any) -> dict[str, ItemGroup]:
    groups = c.mapping(value, "groups")
    if groups is None:
        return {}
    result: dict[str, ItemGroup] = {}
    for raw_id, spec in groups.items():
        path = f"groups.{raw_id}"
        group_id = c.snake_case(raw_id, path, "group id")
        spec = c.mapping(spec, path)
        if group_id is None or spec is None:
            continue
        c.keys(spec, path, _GROUP_REQUIRED)
        tender = (
            c.text(spec["tender_wording"], f"{path}.tender_wording", tender=True)
            if "tender_wording" in spec
            else None
        )
        text = c.text(spec["text"], f"{path}.text") if "text" in spec else None
        if tender is not None and text is not None:
            result[group_id] = ItemGroup(id=group_id, tender_wording=tender, text=text)
    return result


def _items(
    c: _Checker,
    value: Any,
    response_scales: Mapping[str, ResponseScale],
    groups: Mapping[str, ItemGroup],
    declared: Mapping[str, set[Any]],
) -> tuple[tuple[Item, ...], set[str], set[str]]:
    """The valid items, every item id declared and every group referred to.

    `declared` holds the response scale and group names present in the file, valid or not.
    """
    raw_items = c.sequence(value, "items")
    if raw_items is None:
        return (), set(), set()
    if not raw_items:
        c.add("items", "must contain at least one item")
    items: list[Item] = []
    first_seen: dict[str, int] = {}
    used_groups: set[str] = set()
    for i, spec in enumerate(raw_items):
        path = f"items[{i}]"
        spec = c.mapping(spec, path)
        if spec is None:
            continue
        c.keys(spec, path, _ITEM_REQUIRED, _ITEM_OPTIONAL)
        errors_before = len(c.problems)

        item_id = c.snake_case(spec["id"], f"{path}.id", "item id") if "id" in spec else None
        if item_id is not None:
            if item_id in first_seen:
                c.add(
                    f"{path}.id",
                    f"duplicate item id {item_id!r} (also items[{first_seen[item_id]}])",
                )
            else:
                first_seen[item_id] = i

        tender = (
            c.text(spec["tender_wording"], f"{path}.tender_wording", tender=True)
            if "tender_wording" in spec
            else None
        )
        text = _phrasings(c, spec["text"], f"{path}.text") if "text" in spec else None
        sms = _phrasings(c, spec["sms"], f"{path}.sms") if "sms" in spec else None
        if text is not None and sms is not None and set(text) != set(sms):
            c.add(f"{path}.sms", "must have the same phrasings as text (one text, or others/self)")

        scale: ResponseScale | None = None
        if "scale" in spec:
            scale_name = c.text(spec["scale"], f"{path}.scale")
            if scale_name is not None:
                scale = response_scales.get(scale_name)
                # A declared but invalid scale has been reported already.
                if scale is None and scale_name not in declared["response_scales"]:
                    known = ", ".join(response_scales) or "none defined"
                    c.add(
                        f"{path}.scale", f"unknown response scale {scale_name!r} (known: {known})"
                    )

        if sms is not None:
            for phrasing, wording in sms.items():
                sms_path = (
                    f"{path}.sms" if phrasing == DEFAULT_PHRASING else f"{path}.sms.{phrasing}"
                )
                _check_sms(c, wording, sms_path, scale)

        reverse = spec.get("reverse")
        if "reverse" in spec and not isinstance(reverse, bool):
            c.add(f"{path}.reverse", f"must be true or false, not {reverse!r}")

        group = spec.get("group")
        if isinstance(group, str):
            used_groups.add(group)
        if "group" in spec and (
            not isinstance(group, str) or group not in {*groups, *declared["groups"]}
        ):
            known = ", ".join(groups) or "none defined"
            c.add(f"{path}.group", f"unknown group {group!r} (known: {known})")

        if len(c.problems) == errors_before and all(
            x is not None for x in (item_id, tender, text, sms, scale)
        ):
            assert item_id and tender and text and sms and scale
            items.append(
                Item(
                    id=item_id,
                    tender_wording=tender,
                    text=text,
                    sms=sms,
                    scale=scale,
                    reverse=bool(reverse),
                    group=group,
                )
            )
    return tuple(items), set(first_seen), used_groups


def _phrasings(c: _Checker, value: Any, path: str) -> dict[str, str] | None:
    if isinstance(value, str):
        text = c.text(value, path)
        return None if text is None else {DEFAULT_PHRASING: text}
    if not isinstance(value, Mapping):
        c.add(
            path,
            f"must be a string, or a mapping with 'others' and 'self', not {_type_name(value)}",
        )
        return None
    errors_before = len(c.problems)
    c.keys(value, path, _DUAL_PHRASINGS)
    result = {key: c.text(value[key], f"{path}.{key}") for key in _DUAL_PHRASINGS if key in value}
    if len(c.problems) != errors_before:
        return None
    if result["others"] == result["self"]:
        c.add(f"{path}.self", "self wording is the same as others; use a single text instead")
        return None
    return {key: str(result[key]) for key in _DUAL_PHRASINGS}


def _check_sms(c: _Checker, wording: str, path: str, scale: ResponseScale | None) -> None:
    if len(wording) > SMS_MAX_CHARS:
        c.add(path, f"is {len(wording)} characters; SMS wording must be at most {SMS_MAX_CHARS}")
    elif scale is not None:
        total = len(wording) + 1 + len(scale.sms_hint())
        if total > SMS_SEGMENT_CHARS:
            c.add(
                path,
                f"with the hint {scale.sms_hint()!r} it is {total} characters,"
                f" more than one SMS ({SMS_SEGMENT_CHARS})",
            )
    c.gsm7(wording, path)


def _subscales(c: _Checker, value: Any, item_ids: set[str]) -> dict[str, tuple[str, ...]]:
    subscales = c.mapping(value, "scales")
    if subscales is None:
        return {}
    result: dict[str, tuple[str, ...]] = {}
    for raw_name, members in subscales.items():
        path = f"scales.{raw_name}"
        name = c.snake_case(raw_name, path, "subscale name")
        members = c.sequence(members, path)
        if name is None or members is None:
            continue
        if not members:
            c.add(path, "must list at least one item id")
        ok = True
        for j, member in enumerate(members):
            if not isinstance(member, str) or member not in item_ids:
                c.add(f"{path}[{j}]", f"unknown item id {member!r}")
                ok = False
            elif members.index(member) != j:
                c.add(f"{path}[{j}]", f"item {member!r} is listed twice")
                ok = False
        if ok:
            result[name] = tuple(members)
    return result
