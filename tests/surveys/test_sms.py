"""SMS arithmetic (surveys/sms.py), and a check that every message the engine sends is one
GSM-7 segment, whatever the names it is given."""

from __future__ import annotations

import itertools

import pytest

from surveys import conversation as conv
from surveys.instruments import load_library
from surveys.sms import encoding, fit_one_segment, fits_one_segment, gsm_safe, segments
from surveys.wording import fit_one_segment as wording_fit_one_segment
from surveys.wording import gsm_safe as wording_gsm_safe
from surveys.wording import invitation_sms

LIBRARY = load_library()

LONG_NAME = "Bartholomew-Alexander"
LONG_HOME = "The Royal Borough of Kensington Residential and Nursing Home"
LONG_PROGRAMME = "North West London Care Home Manager Leadership Programme 2027"
LONG_CONTACT = "programme.team@nwlondon-carehomes.nhs.uk"
NAMES = [LONG_NAME, "Siân", "Zoë", "Łukasz", "Siân Rees-O’Connor", "王芳", "", None]
HOMES = [LONG_HOME, "Willow Court", "Maison Émilie – “The Cedars”", None]


# --------------------------------------------------------------------------- segments

SEGMENT_CASES = [
    # (text, segments, encoding)
    ("", 1, "GSM-7"),
    ("4", 1, "GSM-7"),
    ("a" * 160, 1, "GSM-7"),
    ("a" * 161, 2, "GSM-7"),
    ("a" * 306, 2, "GSM-7"),
    ("a" * 307, 3, "GSM-7"),
    ("é" * 160, 1, "GSM-7"),  # é is in the basic set
    ("€", 1, "GSM-7"),
    ("€" * 80, 1, "GSM-7"),  # 160 septets
    ("€" * 81, 2, "GSM-7"),  # 162 septets
    ("a" * 158 + "€", 1, "GSM-7"),
    ("a" * 159 + "€", 2, "GSM-7"),
    ("a" * 159 + "[", 2, "GSM-7"),
    ("^{}\\[~]|\f", 1, "GSM-7"),
    # 306 septets would be 2 segments, but the escape pair is not split across segments.
    ("a" * 152 + "€" + "a" * 152, 3, "GSM-7"),
    ("â" * 70, 1, "UCS-2"),
    ("â" * 71, 2, "UCS-2"),
    ("â" * 134, 2, "UCS-2"),
    ("â" * 135, 3, "UCS-2"),
    ("a" * 69 + "’", 1, "UCS-2"),
    ("a" * 70 + "’", 2, "UCS-2"),  # one curly quote costs the message 90 characters
    ("😀" * 35, 1, "UCS-2"),  # an emoji is 2 UTF-16 code units
    ("😀" * 36, 2, "UCS-2"),
    ("a" + "😀" * 35, 2, "UCS-2"),
    ("Zoë", 1, "UCS-2"),  # ë is not in GSM-7
    ("سلام", 1, "UCS-2"),
]


@pytest.mark.parametrize(("text", "count", "coding"), SEGMENT_CASES)
def test_segments_and_encoding(text: str, count: int, coding: str) -> None:
    assert segments(text) == count
    assert encoding(text) == coding
    assert fits_one_segment(text) == (count == 1 and coding == "GSM-7")


# --------------------------------------------------------------------------- gsm_safe

GSM_SAFE_CASES = [
    ("Siân", "Sian"),
    ("Zoë", "Zoe"),
    ("Łukasz", "Lukasz"),
    ("Renée", "Renée"),  # é is GSM-7 already
    ("“Willow” Court’s", '"Willow" Court\'s'),
    ("9–5 — daily", "9-5 - daily"),
    ("Wait…", "Wait..."),
    ("Thanks 😀!", "Thanks !"),
    ("£5 or €5 [approx]", "£5 or €5 [approx]"),
    ("３½", "31/2"),
    ("Œuvre façade", "OEuvre facade"),
    ("tab\there", "tab here"),
    ("王芳", ""),
]


@pytest.mark.parametrize(("raw", "safe"), GSM_SAFE_CASES)
def test_gsm_safe(raw: str, safe: str) -> None:
    assert gsm_safe(raw) == safe
    assert encoding(gsm_safe(raw)) == "GSM-7"


def test_fit_one_segment_takes_the_first_variant_that_fits() -> None:
    long = "x" * 161
    assert fit_one_segment(long, "Zoë’s short") == "Zoe's short"
    assert fit_one_segment("short", "shorter") == "short"
    # Counted in septets: 80 euro signs fit, 81 do not.
    assert fit_one_segment("€" * 81, "fallback") == "fallback"
    assert fit_one_segment("€" * 80, "fallback") == "€" * 80


def test_fit_one_segment_returns_the_last_variant_when_none_fits() -> None:
    assert fit_one_segment("x" * 200, "y" * 170) == "y" * 170
    with pytest.raises(ValueError):
        fit_one_segment()


def test_wording_reexports_the_helpers_and_keeps_invitations_one_segment() -> None:
    assert wording_gsm_safe is gsm_safe
    assert wording_fit_one_segment is fit_one_segment
    link = "https://carepulse.example/s/AbCdEf123456"
    text = invitation_sms("Siân Rees", "Maison Émilie – “The Cedars”", link)
    assert text.startswith('Hi Sian, a 2-min survey about Maison Émilie - "The Cedars"')
    assert link in text and text.endswith("Reply STOP to opt out")
    assert fits_one_segment(text)
    fallback = invitation_sms(LONG_NAME, LONG_HOME + " " + LONG_HOME, link)
    assert "your care home" in fallback and fits_one_segment(fallback)


# --------------------------------------------------------------------------- every message


def _surveys() -> list[conv.Survey]:
    """Every instrument, in every phrasing, with its long title and a short SMS title."""
    surveys = []
    for instrument in LIBRARY.values():
        relations = ("staff", "self") if instrument.has_self_phrasing else (None,)
        for relation, title in itertools.product(relations, (instrument.title, "survey")):
            surveys.append(conv.Survey(title, instrument, relation))
    return surveys


def _every_message() -> list[tuple[str, str]]:
    """(what, message) for every template and every question, with awkward names."""
    messages: list[tuple[str, str]] = []
    for survey in _surveys():
        where = f"{survey.instrument.key}/{survey.relation}/{survey.title}"
        for name, home, (position, total) in itertools.product(
            NAMES, HOMES, [(None, None), (1, 1), (1, 2), (12, 12)]
        ):
            _, text = conv.start(survey, name, home, position=position, total=total)
            messages.append((f"start {where} {name} {home} {position}/{total}", text))
        for index, item in enumerate(survey.instrument.items):
            state = conv.State(position=index)
            for name in NAMES:
                for intro in (None, conv.GIVE_UP_NOTE):
                    text = conv.question(survey, state, first_name=name, intro=intro)
                    messages.append((f"question {where} {item.id} {name} {intro}", text))
            for invalid in (
                conv.Invalid("empty"),
                conv.Invalid("not_a_number"),
                conv.Invalid("ambiguous"),
                conv.Invalid("ambiguous", (3, 4)),
                conv.Invalid("ambiguous", (1, 2, 3, 4)),
                conv.Invalid("out_of_range", (9,)),
                conv.Invalid("out_of_range", (-99999,)),
                conv.Invalid("out_of_range"),
            ):
                text = conv.reask_reply(invalid, item.scale)
                messages.append((f"reask {where} {item.id} {invalid}", text))
    for name in NAMES:
        messages.append((f"thanks {name}", conv.thank_you_reply(name)))
        messages.append((f"thanks more {name}", conv.thank_you_reply(name, more_surveys=True)))
        messages.append((f"nothing open {name}", conv.nothing_open_reply(name)))
        messages.append((f"finished {name}", conv.already_finished_reply(name)))
    for programme, contact in itertools.product(
        [LONG_PROGRAMME, LONG_PROGRAMME * 3, "Programme Leadership Siân–Zoë", ""],
        [LONG_CONTACT, LONG_CONTACT * 4, "020 7946 0123", "your manager", "", None],
    ):
        messages.append((f"help {programme} {contact}", conv.help_reply(programme, contact)))
    messages.append(("stopped", conv.stopped_reply()))
    messages.append(("restarted", conv.restarted_reply()))
    messages.append(("unknown", conv.unknown_number_reply()))
    return messages


def test_every_message_is_one_gsm7_segment() -> None:
    messages = _every_message()
    assert len(messages) > 1000
    too_long = [
        (what, text) for what, text in messages if segments(text) != 1 or encoding(text) != "GSM-7"
    ]
    assert too_long == []
    assert all(text == text.strip() and "  " not in text for _, text in messages)


def test_every_question_keeps_its_whole_wording_in_every_form() -> None:
    for survey in _surveys():
        for index, item in enumerate(survey.instrument.items):
            wording = survey.instrument.sms_text(item.id, survey.relation)
            for name in NAMES:
                text = conv.question(survey, conv.State(position=index), first_name=name)
                assert wording in text
                assert text.endswith(" or SKIP")
            _, opening = conv.start(survey, LONG_NAME, LONG_HOME, position=2, total=2)
            first = survey.instrument.sms_text(survey.instrument.items[0].id, survey.relation)
            assert first in opening
            assert opening.endswith("STOP to opt out")
