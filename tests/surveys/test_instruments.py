"""Tests for the instrument library (surveys/instruments) and its validating loader."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from surveys.instruments import (
    GSM7_BASIC_CHARS,
    LIBRARY_DIR,
    RELATIONS,
    ROLES,
    SMS_MAX_CHARS,
    SMS_SEGMENT_CHARS,
    STAFF_ROLES,
    InstrumentDefinition,
    InstrumentError,
    load_instrument,
    load_library,
    reverse_score,
)

SEED = Path("/work/shared/seeds/000_8d9ba2ec56e3f39f.txt")

# Copied from the tender (Appendix 1 "Outcomes"); \u00a0 is a non-breaking space the
# tender itself contains.
SELF_REPORT_INTRO = (
    "Evidence of a quantifiable improvement in mangers before and after the programme "
    "through self-reporting of:"
)
LOCAL_SERVICES_HEADING = "Understanding of access to local services\u00a0 in particular:"
SELF_REPORT_TENDER = [
    "Levels of stress",
    "Enthusiasm for working in care homes",
    "Managers feeling valued for the work they do",
    "Job satisfaction",
    "Positive quality of life for managers",
    "Understanding of how to improve the culture of care has increased",
    "Perception of the quality of life of my residents",
    "What local services are available for care homes to access",
    "What local services are available in particular for care homes to access in a mental "
    "crisis situation",
    "The referral processes to access local services",
    "What local services expect from care homes in making referrals",
    "Understanding of what information is required and at what level by safeguarding teams",
    "Understanding and recognition of\u00a0 my leadership style",
    "Ability to adapt style to develop and improve leadership skills",
    "Ability to navigate local services",
]
APPRAISAL_INTRO = (
    "360 degree appraisal of mangers (involving related care home worker staff) before and "
    "after the programme evidencing a quantifiable improvement in care home managers:"
)
APPRAISAL_TENDER = [
    "Ability for residents active involvement in decisions affecting them",
    "Staff are actively encouraged to develop their skills",
    "Staff are congratulated when they do things well",
    "Provide space to listen to the views of staff",
    "Staff can try out new ideas without criticism",
    "Quality of interaction between staff, residents and relatives has increased",
    "Quality of management and leadership care home managers",
    "Ability to influence and manage key stakeholders including internally e.g. proprietors "
    "and commissioners",
    "Ability to observe and identify issues/challenges",
    "Ability to listen and act on staff feedback",
    "Ability to mentor staff",
]
MORALE_TENDER = (
    "Care home worker staff also asked before and after the programme to rate \u2018morale\u2019 "
    "within related care homes with an expectation of a quantifiable improvement."
)
LOCAL_SERVICES_SUBITEMS = SELF_REPORT_TENDER[7:12]


@pytest.fixture(scope="module")
def library() -> dict[str, InstrumentDefinition]:
    return load_library()


@pytest.fixture(scope="module")
def self_report(library: dict[str, InstrumentDefinition]) -> InstrumentDefinition:
    return library["manager_self_report"]


@pytest.fixture(scope="module")
def appraisal(library: dict[str, InstrumentDefinition]) -> InstrumentDefinition:
    return library["appraisal_360"]


@pytest.fixture(scope="module")
def morale(library: dict[str, InstrumentDefinition]) -> InstrumentDefinition:
    return library["staff_morale"]


# ------------------------------------------------------------------ the shipped library


def test_library_holds_the_three_instruments(library: dict[str, InstrumentDefinition]) -> None:
    assert set(library) == {"manager_self_report", "appraisal_360", "staff_morale"}
    assert all(inst.version == 1 for inst in library.values())


@pytest.mark.parametrize(
    "filename", ["manager_self_report.yaml", "appraisal_360.yaml", "staff_morale.yaml"]
)
def test_each_file_loads(filename: str) -> None:
    inst = load_instrument(LIBRARY_DIR / filename)
    assert inst.key == filename.removesuffix(".yaml")
    assert inst.title.strip() and inst.description.strip() and inst.source.strip()
    assert "ours" in inst.design_notes.lower()
    assert inst.items


def test_self_report_items_are_the_tender_lines_in_order(
    self_report: InstrumentDefinition,
) -> None:
    assert len(self_report.items) == 15
    assert [item.tender_wording for item in self_report.items] == SELF_REPORT_TENDER
    assert self_report.audience == ("manager",)


def test_local_services_group_keeps_the_tender_heading(self_report: InstrumentDefinition) -> None:
    assert list(self_report.groups) == ["local_services_access"]
    group = self_report.groups["local_services_access"]
    assert group.tender_wording == LOCAL_SERVICES_HEADING
    grouped = [i.tender_wording for i in self_report.items if i.group == group.id]
    assert grouped == LOCAL_SERVICES_SUBITEMS
    assert LOCAL_SERVICES_HEADING not in [i.tender_wording for i in self_report.items]


def test_appraisal_items_are_the_tender_lines_in_order(appraisal: InstrumentDefinition) -> None:
    assert len(appraisal.items) == 11
    assert [item.tender_wording for item in appraisal.items] == APPRAISAL_TENDER


def test_morale_has_one_item(morale: InstrumentDefinition) -> None:
    assert len(morale.items) == 1
    (item,) = morale.items
    assert item.tender_wording == MORALE_TENDER
    assert item.scale.min == 1 and item.scale.max == 5
    assert item.scale.labels[1] == "Very low" and item.scale.labels[5] == "Very high"
    assert morale.sms_text("morale") == "How is morale in your care home at the moment?"
    assert morale.audience == STAFF_ROLES


def test_expected_tender_lines_occur_verbatim_in_the_seed() -> None:
    """Guards the literals above: they must be the tender's own lines, in the tender's order."""
    if not SEED.exists():
        pytest.skip(f"tender seed file {SEED} is not available")
    lines = [line.strip() for line in SEED.read_text(encoding="utf-8").splitlines()]
    self_block = [SELF_REPORT_INTRO, *SELF_REPORT_TENDER[:7], LOCAL_SERVICES_HEADING]
    self_block += SELF_REPORT_TENDER[7:]
    for block in (self_block, [APPRAISAL_INTRO, *APPRAISAL_TENDER], [MORALE_TENDER]):
        for line in block:
            assert line in lines, f"not a line of the tender: {line!r}"
        start = lines.index(block[0])
        assert lines[start : start + len(block)] == block


def test_appraisal_has_distinct_self_and_others_phrasings(
    appraisal: InstrumentDefinition,
) -> None:
    assert appraisal.has_self_phrasing
    for item in appraisal.items:
        assert set(item.text) == {"others", "self"} == set(item.sms)
        own, theirs = appraisal.item_text(item.id, "self"), appraisal.item_text(item.id, "staff")
        assert own != theirs
        assert theirs.startswith("My manager ") and own.startswith("I ")
        assert appraisal.sms_text(item.id, "self") != appraisal.sms_text(item.id, "staff")
        assert appraisal.sms_text(item.id, "self").startswith("I ")
        for relation in ("staff", "line_manager", "peer", None):
            assert appraisal.item_text(item.id, relation) == item.text["others"]
            assert appraisal.sms_text(item.id, relation) == item.sms["others"]


def test_appraisal_audience_is_manager_staff_and_proprietor(
    appraisal: InstrumentDefinition,
) -> None:
    assert set(appraisal.audience) == set(ROLES)


def test_single_phrasing_items_read_the_same_for_every_relation(
    self_report: InstrumentDefinition,
) -> None:
    assert not self_report.has_self_phrasing
    for relation in RELATIONS:
        assert (
            self_report.item_text("stress", relation) == self_report.item("stress").text["default"]
        )
        assert self_report.sms_text("stress", relation) == self_report.item("stress").sms["default"]


def test_unknown_item_and_relation_are_refused(appraisal: InstrumentDefinition) -> None:
    with pytest.raises(KeyError):
        appraisal.item("no_such_item")
    with pytest.raises(ValueError, match="relation"):
        appraisal.item_text("mentors_staff", "boss")


def test_only_stress_is_reverse_scored(library: dict[str, InstrumentDefinition]) -> None:
    reversed_items = [
        (inst.key, item.id) for inst in library.values() for item in inst.items if item.reverse
    ]
    assert reversed_items == [("manager_self_report", "stress")]


def test_every_sms_fits_one_gsm7_message(library: dict[str, InstrumentDefinition]) -> None:
    checked = 0
    for inst in library.values():
        for item in inst.items:
            for wording in item.sms.values():
                assert len(wording) <= SMS_MAX_CHARS, wording
                assert set(wording) <= GSM7_BASIC_CHARS, wording
                assert len(f"{wording} {item.scale.sms_hint()}") <= SMS_SEGMENT_CHARS
                checked += 1
            for wording in item.text.values():
                assert "\u2019" not in wording and "\u2013" not in wording
    assert checked == 15 + 2 * 11 + 1


def test_subscales_cover_every_item_once(library: dict[str, InstrumentDefinition]) -> None:
    for inst in library.values():
        members = [i for ids in inst.scales.values() for i in ids]
        assert sorted(members) == sorted(inst.item_ids), inst.key


def test_scales_are_five_point(library: dict[str, InstrumentDefinition]) -> None:
    for inst in library.values():
        for scale in inst.response_scales.values():
            assert (scale.min, scale.max) == (1, 5)
            assert set(scale.labels) == {1, 2, 3, 4, 5}


def test_reverse_score(self_report: InstrumentDefinition) -> None:
    stress, job = self_report.item("stress"), self_report.item("job_satisfaction")
    assert [reverse_score(stress, v) for v in range(1, 6)] == [5, 4, 3, 2, 1]
    assert [reverse_score(job, v) for v in range(1, 6)] == [1, 2, 3, 4, 5]
    for bad in (0, 6, True, 2.0):
        with pytest.raises(ValueError):
            reverse_score(stress, bad)  # type: ignore[arg-type]


def test_roles_constants() -> None:
    assert ROLES == (
        "manager",
        "deputy_manager",
        "nurse",
        "senior_care_worker",
        "care_worker",
        "ancillary",
        "proprietor",
    )
    assert STAFF_ROLES == (
        "deputy_manager",
        "nurse",
        "senior_care_worker",
        "care_worker",
        "ancillary",
    )


# ------------------------------------------------------------- round trip and hashing


def test_to_dict_round_trips(library: dict[str, InstrumentDefinition]) -> None:
    for inst in library.values():
        data = inst.to_dict()
        assert InstrumentDefinition.from_dict(data) == inst
        through_json = json.loads(json.dumps(data))
        again = InstrumentDefinition.from_dict(through_json)
        assert again == inst
        assert again.content_hash == inst.content_hash


def test_to_dict_matches_the_file(library: dict[str, InstrumentDefinition]) -> None:
    for inst in library.values():
        raw = yaml.safe_load((LIBRARY_DIR / f"{inst.key}.yaml").read_text(encoding="utf-8"))
        assert InstrumentDefinition.from_dict(raw) == inst


def test_content_hash_is_stable_and_changes_with_wording(
    appraisal: InstrumentDefinition,
) -> None:
    assert len(appraisal.content_hash) == 64
    assert load_instrument(LIBRARY_DIR / "appraisal_360.yaml").content_hash == (
        appraisal.content_hash
    )
    data = appraisal.to_dict()
    data["items"][0]["text"]["self"] += " Always."
    changed = InstrumentDefinition.from_dict(data)
    assert changed != appraisal
    assert changed.content_hash != appraisal.content_hash

    data = appraisal.to_dict()
    data["items"][2]["sms"]["others"] = "My manager praises staff."
    assert InstrumentDefinition.from_dict(data).content_hash != appraisal.content_hash

    bumped = dataclasses.replace(appraisal, version=2)
    assert bumped.content_hash != appraisal.content_hash


# ------------------------------------------------------------------------ loader errors


def valid_definition() -> dict[str, Any]:
    """A small valid instrument in file shape, for breaking in tests."""
    return {
        "key": "tiny",
        "version": 1,
        "title": "Tiny",
        "description": "A tiny test instrument.",
        "audience": ["manager", "care_worker"],
        "source": "tests",
        "design_notes": "All choices here are ours.",
        "response_scales": {"level": {"min": 1, "max": 5, "labels": {1: "Low", 5: "High"}}},
        "groups": {"g": {"tender_wording": "Heading:", "text": "Heading"}},
        "items": [
            {
                "id": "first",
                "tender_wording": "First",
                "text": {"others": "My manager is first.", "self": "I am first."},
                "sms": {"others": "My manager is first.", "self": "I am first."},
                "scale": "level",
                "reverse": False,
                "group": "g",
            },
            {
                "id": "second",
                "tender_wording": "Second",
                "text": {"others": "My manager is second.", "self": "I am second."},
                "sms": {"others": "Manager second?", "self": "Me second?"},
                "scale": "level",
                "reverse": True,
            },
        ],
        "scales": {"all": ["first", "second"]},
    }


def write(tmp_path: Path, data: Any, name: str = "broken.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def error_for(path: Path) -> InstrumentError:
    with pytest.raises(InstrumentError) as info:
        load_instrument(path)
    return info.value


def test_valid_definition_loads(tmp_path: Path) -> None:
    inst = load_instrument(write(tmp_path, valid_definition(), "tiny.yaml"))
    assert inst.item_ids == ("first", "second")
    assert inst.item("second").reverse is True
    assert inst.item_text("first", "peer") == "My manager is first."


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return mutate


def _delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for step in path[:-1]:
            target = target[step]
        del target[path[-1]]

    return mutate


def _duplicate_first_id(data: dict[str, Any]) -> None:
    data["items"][1]["id"] = "first"


BROKEN_CASES = [
    ("missing_field", _delete(("title",)), "title", "required field is missing"),
    ("missing_item_field", _delete(("items", 1, "scale")), "items[1].scale", "missing"),
    ("unknown_top_key", _set(("titel",), "x"), "titel", "unknown key (did you mean 'title'?)"),
    ("unknown_item_key", _set(("items", 0, "reversed"), True), "items[0].reversed", "unknown key"),
    (
        "unknown_scale",
        _set(("items", 1, "scale"), "agree"),
        "items[1].scale",
        "unknown response scale 'agree'",
    ),
    ("duplicate_item_id", _duplicate_first_id, "items[1].id", "duplicate item id 'first'"),
    (
        "bad_reverse_type",
        _set(("items", 1, "reverse"), "yes"),
        "items[1].reverse",
        "must be true or false",
    ),
    (
        "sms_too_long",
        _set(("items", 0, "sms", "self"), "x" * 101),
        "items[0].sms.self",
        "is 101 characters; SMS wording must be at most 100",
    ),
    (
        "sms_not_gsm7",
        _set(("items", 0, "sms", "others"), "My manager\u2019s \u2013 great"),
        "items[0].sms.others",
        "outside the GSM-7",
    ),
    (
        "min_not_below_max",
        _set(("response_scales", "level", "min"), 5),
        "response_scales.level.max",
        "must be greater than min",
    ),
    (
        "label_out_of_range",
        _set(("response_scales", "level", "labels", 7), "Huge"),
        "response_scales.level.labels.7",
        "outside the scale 1-5",
    ),
    (
        "missing_end_label",
        _set(("response_scales", "level", "labels"), {1: "Low"}),
        "response_scales.level.labels",
        "end point 5",
    ),
    (
        "unknown_role",
        _set(("audience",), ["manager", "cook"]),
        "audience[1]",
        "unknown role 'cook'",
    ),
    (
        "subscale_unknown_item",
        _set(("scales", "all"), ["first", "third"]),
        "scales.all[1]",
        "unknown item id 'third'",
    ),
    ("id_not_snake_case", _set(("items", 0, "id"), "First Item"), "items[0].id", "snake_case"),
    ("version_not_int", _set(("version",), "1"), "version", "must be an integer"),
    ("unknown_group", _set(("items", 1, "group"), "h"), "items[1].group", "unknown group 'h'"),
    (
        "same_self_and_others",
        _set(("items", 1, "text", "self"), "My manager is second."),
        "items[1].text.self",
        "same as others",
    ),
    (
        "phrasing_shapes_differ",
        _set(("items", 1, "sms"), "Second?"),
        "items[1].sms",
        "same phrasings as text",
    ),
    (
        "tender_not_trimmed",
        _set(("items", 0, "tender_wording"), "First "),
        "items[0].tender_wording",
        "trailing whitespace",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [case[1:] for case in BROKEN_CASES],
    ids=[case[0] for case in BROKEN_CASES],
)
def test_loader_names_file_field_and_reason(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], field: str, reason: str
) -> None:
    data = valid_definition()
    mutate(data)
    path = write(tmp_path, data)
    error = error_for(path)
    message = str(error)
    assert str(path) in message
    matching = [p for p in error.problems if p.field == field and reason in p.reason]
    assert matching, message
    assert f"{path}: {field}: " in message
    assert isinstance(error, ValueError)


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    data = valid_definition()
    del data["title"]
    data["colour"] = "blue"
    data["items"][0]["scale"] = "nope"
    data["items"][1]["reverse"] = "no"
    data["items"][1]["sms"]["self"] = "y" * 120
    data["response_scales"]["level"]["max"] = 0
    path = write(tmp_path, data)
    error = error_for(path)
    expected_fields = {
        "title",
        "colour",
        "items[0].scale",
        "items[1].reverse",
        "items[1].sms.self",
        "response_scales.level.max",
    }
    assert expected_fields <= {p.field for p in error.problems}
    lines = str(error).splitlines()
    assert "6 problems" in lines[0] or f"{len(error.problems)} problems" in lines[0]
    for field in expected_fields:
        assert sum(f": {field}: " in line for line in lines[1:]) >= 1, field
    assert len(lines) == 1 + len(error.problems)


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    text = yaml.safe_dump(valid_definition(), sort_keys=False) + "title: Again\n"
    path = tmp_path / "dup.yaml"
    path.write_text(text, encoding="utf-8")
    message = str(error_for(path))
    assert str(path) in message and "duplicate key 'title'" in message


def test_invalid_yaml_and_non_mapping_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("key: [unclosed\n", encoding="utf-8")
    assert "not valid YAML" in str(error_for(bad))
    listing = tmp_path / "list.yaml"
    listing.write_text("- just\n- a list\n", encoding="utf-8")
    assert "(document): must be a mapping" in str(error_for(listing))


def test_from_dict_refuses_bad_data() -> None:
    data = copy.deepcopy(valid_definition())
    data["items"][0]["scale"] = "missing"
    with pytest.raises(InstrumentError, match=r"<dict>: items\[0\]\.scale: unknown response"):
        InstrumentDefinition.from_dict(data)


def test_load_library_refuses_duplicate_keys(tmp_path: Path) -> None:
    write(tmp_path, valid_definition(), "a.yaml")
    write(tmp_path, valid_definition(), "b.yaml")
    with pytest.raises(InstrumentError) as info:
        load_library(tmp_path)
    message = str(info.value)
    assert "b.yaml: key: duplicate instrument key 'tiny'" in message
    assert "a.yaml" in message


def test_load_library_reports_every_broken_file(tmp_path: Path) -> None:
    first, second = valid_definition(), valid_definition()
    first["key"], second["key"] = "one", "two"
    del first["items"][0]["sms"]
    second["audience"] = []
    write(tmp_path, first, "one.yaml")
    write(tmp_path, second, "two.yaml")
    write(tmp_path, {**valid_definition(), "key": "three"}, "three.yaml")
    with pytest.raises(InstrumentError) as info:
        load_library(tmp_path)
    files = {Path(p.file).name for p in info.value.problems}
    assert files == {"one.yaml", "two.yaml"}


def test_load_library_from_directory(tmp_path: Path) -> None:
    write(tmp_path, valid_definition(), "tiny.yaml")
    (tmp_path / "notes.txt").write_text("not an instrument", encoding="utf-8")
    assert list(load_library(tmp_path)) == ["tiny"]
    with pytest.raises(InstrumentError, match="not found"):
        load_library(tmp_path / "missing")
