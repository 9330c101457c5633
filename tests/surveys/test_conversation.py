"""The SMS conversation engine (surveys/conversation.py): parsing replies, keywords, and
whole conversations through start + step for every real instrument."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from surveys.conversation import (
    GIVE_UP_NOTE,
    Invalid,
    Outcome,
    Parsed,
    Signpost,
    Skip,
    State,
    Survey,
    Value,
    already_finished_reply,
    keyword,
    parse_answer,
    question,
    reask_reply,
    start,
    step,
    thank_you_reply,
)
from surveys.instruments import InstrumentDefinition, ResponseScale, load_library
from surveys.sms import encoding, segments

LIBRARY = load_library()
APPRAISAL = LIBRARY["appraisal_360"]
SELF_REPORT = LIBRARY["manager_self_report"]
MORALE = LIBRARY["staff_morale"]

LEVEL = MORALE.item("morale").scale  # 1 Very low .. 5 Very high
AGREEMENT = APPRAISAL.item("staff_praise").scale  # 1 Strongly disagree .. 5 Strongly agree
RATING = SELF_REPORT.item("quality_of_life").scale  # 1 Very poor .. 4 Good .. 5 Very good
SCALES = {"level": LEVEL, "agreement": AGREEMENT, "rating": RATING}

LOW_MORALE = Signpost(
    id="low-morale",
    instrument="staff_morale",
    item_id="morale",
    values=frozenset({1}),
    message="If things are hard, the Care Workers’ Charity can help – call 0808 000 0000.",
)
HIGH_STRESS = Signpost(
    id="feeling-hard",
    instrument="manager_self_report",
    item_id="stress",
    values=frozenset({5}),
    message="Thank you for telling us. If things feel hard, you can talk to Samaritans free,"
    " any time, on 116 123.",
)


# --------------------------------------------------------------------------- parse_answer

PARSE_CASES: list[tuple[str, str, Parsed]] = [
    # Plain and generous
    ("4", "level", Value(4)),
    ("1", "level", Value(1)),
    ("5", "level", Value(5)),
    (" 4.", "level", Value(4)),
    ("4!", "level", Value(4)),
    ("#4", "level", Value(4)),
    ("(4)", "level", Value(4)),
    ("\n\t4 \n", "level", Value(4)),
    ("4️⃣", "level", Value(4)),  # keycap emoji: 4 + U+FE0F + U+20E3
    ("４", "level", Value(4)),  # fullwidth digit
    ("٤", "level", Value(4)),  # Arabic-Indic digit
    ("\u200f4\u200f", "level", Value(4)),  # wrapped in right-to-left marks
    ("4\u200b", "level", Value(4)),  # zero-width space
    ("four", "level", Value(4)),
    ("Four", "level", Value(4)),
    ("FIVE", "level", Value(5)),
    ("4/5", "level", Value(4)),  # denominator is the top of the scale
    ("5/5", "level", Value(5)),
    ("４／５", "level", Value(4)),
    ("4 out of 5", "level", Value(4)),
    ("four out of five", "level", Value(4)),
    ("4 - good", "level", Value(4)),
    ("4 – good", "level", Value(4)),
    ("4 good", "level", Value(4)),
    ("4, not bad", "level", Value(4)),
    ("it's a 4", "level", Value(4)),
    ("It’s a 4", "level", Value(4)),
    ("I'd say 3", "level", Value(3)),
    ("Hi! 2", "level", Value(2)),
    ("4 👍", "level", Value(4)),
    ("4 4", "level", Value(4)),  # the same number twice is still one answer
    ("4.0", "level", Value(4)),
    ("04", "level", Value(4)),
    ("4 - good", "rating", Value(4)),  # the comment agrees with the label of 4
    # Labels, whole message only
    ("very low", "level", Value(1)),
    ("Very High", "level", Value(5)),
    ("VERY HIGH!", "level", Value(5)),
    ("neither high nor low", "level", Value(3)),
    ("Strongly agree.", "agreement", Value(5)),
    ("agree", "agreement", Value(4)),
    ("Good", "rating", Value(4)),
    ("very high", "agreement", Invalid("not_a_number")),  # not a label on this scale
    # Skip
    ("SKIP", "level", Skip()),
    ("skip", "level", Skip()),
    ("Skip!", "level", Skip()),
    ("pass", "level", Skip()),
    ("skip please", "level", Skip()),
    ("N/A", "level", Skip()),
    # Ambiguous: more than one answer, or between answers
    ("3 or 4", "level", Invalid("ambiguous", (3, 4))),
    ("3-4", "level", Invalid("ambiguous", (3, 4))),
    ("3 - 4", "level", Invalid("ambiguous", (3, 4))),
    ("3,4", "level", Invalid("ambiguous", (3, 4))),
    ("3/4", "level", Invalid("ambiguous", (3, 4))),  # 4 is not the top of the scale
    ("3 to 4", "level", Invalid("ambiguous", (3, 4))),
    ("four or five", "level", Invalid("ambiguous", (4, 5))),
    ("2 3 4", "level", Invalid("ambiguous", (2, 3, 4))),
    ("34", "level", Invalid("ambiguous", (3, 4))),  # typed without a gap
    ("15", "level", Invalid("ambiguous", (1, 5))),
    ("3.5", "level", Invalid("ambiguous", (3, 4))),
    ("3,5", "level", Invalid("ambiguous", (3, 5))),
    ("3 and a half", "level", Invalid("ambiguous", (3, 4))),
    ("3½", "level", Invalid("ambiguous", (3, 4))),
    ("4/10", "level", Invalid("ambiguous", (4,))),
    ("not 4", "level", Invalid("ambiguous")),
    ("more than 3", "level", Invalid("ambiguous")),
    ("ארבע 4", "level", Invalid("ambiguous")),  # Hebrew words before the number
    ("2 strongly agree", "agreement", Invalid("ambiguous", (2, 5))),
    ("2 good", "rating", Invalid("ambiguous", (2, 4))),
    # Out of range
    ("9", "level", Invalid("out_of_range", (9,))),
    ("0", "level", Invalid("out_of_range", (0,))),
    ("-1", "level", Invalid("out_of_range", (-1,))),
    ("−3", "level", Invalid("out_of_range", (-3,))),  # Unicode minus sign
    ("10", "level", Invalid("out_of_range", (10,))),  # 0 is not on the scale, so not "1 or 0"
    ("44", "level", Invalid("out_of_range", (44,))),
    ("6/5", "level", Invalid("out_of_range", (6,))),
    ("ten", "level", Invalid("out_of_range", (10,))),
    ("12345", "level", Invalid("out_of_range", (12345,))),
    ("5" * 1600, "level", Invalid("out_of_range")),
    # Empty and not a number
    ("", "level", Invalid("empty")),
    ("   ", "level", Invalid("empty")),
    ("\u200f\u200e", "level", Invalid("empty")),
    ("\n", "level", Invalid("empty")),
    (".", "level", Invalid("not_a_number")),
    ("?", "level", Invalid("not_a_number")),
    ("good", "level", Invalid("not_a_number")),
    ("dunno", "level", Invalid("not_a_number")),
    ("I don't know", "level", Invalid("not_a_number")),
    ("STOP", "level", Invalid("not_a_number")),  # keywords are not answers
    ("yes", "level", Invalid("not_a_number")),
    ("👍", "level", Invalid("not_a_number")),
    ("⭐⭐⭐⭐", "level", Invalid("not_a_number")),
    ("أربعة", "level", Invalid("not_a_number")),  # Arabic word "four"
    ("½", "level", Invalid("not_a_number")),
    ("x" * 1600, "level", Invalid("not_a_number")),
    ("very very low", "level", Invalid("not_a_number")),
]


@pytest.mark.parametrize(("text", "scale", "expected"), PARSE_CASES)
def test_parse_answer(text: str, scale: str, expected: Parsed) -> None:
    assert parse_answer(text, SCALES[scale]) == expected


def test_parse_table_is_large_and_covers_every_outcome() -> None:
    assert len(PARSE_CASES) >= 40
    kinds = {type(p).__name__ + getattr(p, "reason", "") for _, _, p in PARSE_CASES}
    assert kinds == {
        "Value",
        "Skip",
        "Invalidempty",
        "Invalidambiguous",
        "Invalidout_of_range",
        "Invalidnot_a_number",
    }


def test_parse_answer_on_a_scale_from_zero_to_ten() -> None:
    scale = ResponseScale("nps", 0, 10, {0: "Not at all likely", 10: "Extremely likely"})
    assert parse_answer("10", scale) == Value(10)
    assert parse_answer("0", scale) == Value(0)
    assert parse_answer("10/10", scale) == Value(10)
    assert parse_answer("11", scale) == Invalid("out_of_range", (11,))
    assert parse_answer("extremely likely", scale) == Value(10)


# --------------------------------------------------------------------------- keyword

KEYWORD_CASES = [
    ("STOP", "stop"),
    ("stop", "stop"),
    ("Stop.", "stop"),
    ("STOP!", "stop"),
    ("  stop  ", "stop"),
    ("STOPALL", "stop"),
    ("stop all", "stop"),
    ("UNSUBSCRIBE", "stop"),
    ("Cancel", "stop"),
    ("END", "stop"),
    ("quit", "stop"),
    ("stop texting me", "stop"),
    ("Please stop texting me!", "stop"),
    ("stop sending me these messages", "stop"),
    ("please stop", "stop"),
    ("stop it", "stop"),
    ("unsubscribe me", "stop"),
    ("opt out", "stop"),
    ("no more texts please", "stop"),
    ("don't stop", None),
    ("don’t stop", None),
    ("do not stop", None),
    ("can I stop?", None),
    ("stop 4", None),
    ("4 stop", None),
    ("the end", None),
    ("cancel that", None),
    ("stopped", None),
    ("START", "start"),
    ("start", "start"),
    ("yes", "start"),
    ("Yes!", "start"),
    ("UNSTOP", "start"),
    ("yes please", None),
    ("HELP", "help"),
    ("help?", "help"),
    ("info", "help"),
    ("help me with question 3", None),
    ("4", None),
    ("", None),
    ("   ", None),
    ("SKIP", None),
]


@pytest.mark.parametrize(("text", "expected"), KEYWORD_CASES)
def test_keyword(text: str, expected: str | None) -> None:
    assert keyword(text) == expected


# --------------------------------------------------------------------------- state


def test_state_round_trips_through_json() -> None:
    state = State(position=3, tries=1, signposted=("low-morale",), finished=False)
    stored = json.loads(json.dumps(state.to_dict()))
    assert stored == {"position": 3, "tries": 1, "signposted": ["low-morale"], "finished": False}
    assert State.from_dict(stored) == state


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (None, State()),
        ({}, State()),
        ({"position": 2}, State(position=2)),
        ({"finished": True, "position": 1}, State(position=1, finished=True)),
        ({"signposted": None, "tries": None}, State()),
        ({"position": 1, "extra": "ignored"}, State(position=1)),
    ],
)
def test_state_from_dict_is_tolerant(data: dict | None, expected: State) -> None:
    assert State.from_dict(data) == expected


def test_state_refuses_negative_numbers() -> None:
    with pytest.raises(ValueError):
        State(position=-1)
    with pytest.raises(ValueError):
        State(tries=-1)


def test_signpost_must_fit_one_segment() -> None:
    with pytest.raises(ValueError, match="one SMS"):
        Signpost("long", "staff_morale", "morale", frozenset({1}), "x" * 161)
    with pytest.raises(ValueError):
        Signpost("none", "staff_morale", "morale", frozenset(), "Help is available.")
    assert LOW_MORALE.text == (
        "If things are hard, the Care Workers' Charity can help - call 0808 000 0000."
    )


# --------------------------------------------------------------------------- messages


def test_question_full_form() -> None:
    survey = Survey("360 survey", APPRAISAL, "staff")
    assert question(survey, State(position=2)) == (
        "Q3/11 My manager congratulates staff when they do things well."
        " Reply 1-5 (1=Strongly disagree, 5=Strongly agree) or SKIP"
    )
    self_survey = Survey("360 survey", APPRAISAL, "self")
    assert question(self_survey, State(position=2)).startswith(
        "Q3/11 I congratulate staff when they do things well."
    )


def test_question_of_a_one_item_survey_has_no_number() -> None:
    survey = Survey("morale survey", MORALE, None)
    assert question(survey, State()) == (
        "How is morale in your care home at the moment? Reply 1-5 (1=Very low, 5=Very high) or SKIP"
    )


def test_a_long_question_drops_the_labels_first() -> None:
    data = APPRAISAL.to_dict()
    long_wording = "My manager " + "very " * 9 + "carefully listens to the views of all staff."
    assert len(long_wording) == 100  # the longest SMS wording an instrument may have
    data["items"][0]["sms"]["others"] = long_wording
    survey = Survey("360 survey", InstrumentDefinition.from_dict(data), "staff")
    assert question(survey, State()) == f"Q1/11 {long_wording} Reply 1-5 or SKIP"


def test_an_intro_is_dropped_before_the_labels() -> None:
    survey = Survey("360 survey", APPRAISAL, "staff")
    index = APPRAISAL.item_ids.index("stakeholder_influence")
    full = question(survey, State(position=index))
    assert full.endswith("Reply 1-5 (1=Strongly disagree, 5=Strongly agree) or SKIP")
    assert question(survey, State(position=index), "Sam", GIVE_UP_NOTE) == full
    short = question(survey, State(position=2), "Sam", GIVE_UP_NOTE)
    assert short.startswith("Hi Sam! No problem, let's move on. Q3/11")


def test_question_with_greeting_and_intro() -> None:
    survey = Survey("morale survey", MORALE, None)
    text = question(survey, State(), first_name="Siân", intro="Welcome back.")
    assert text.startswith("Hi Sian! Welcome back. How is morale")
    with pytest.raises(ValueError):
        question(survey, State(position=1, finished=True))


def test_start_with_everything() -> None:
    survey = Survey("morale survey", MORALE, None)
    state, text = start(survey, "Sam Jones", "Elm House", position=1, total=2)
    assert state == State()
    assert text == (
        "Hi Sam, survey 1 of 2: the Elm House morale survey. How is morale in your care home"
        " at the moment? Reply 1-5 (1=Very low, 5=Very high) or SKIP. STOP to opt out"
    )
    _, single = start(survey, "Sam", "Willow Court")
    assert single.startswith("Hi Sam, this is the Willow Court morale survey. How is morale")


def test_start_with_an_instrument_title() -> None:
    survey = Survey(APPRAISAL.title, APPRAISAL, "staff")
    _, text = start(survey, "Sam", "Elm House")
    assert text.startswith("Hi Sam, a short survey: How the care home manager leads. Q1/11 My")
    assert text.endswith("Reply 1-5 or SKIP. STOP to opt out")


def test_start_drops_the_home_first_and_keeps_stop() -> None:
    survey = Survey("morale survey", MORALE, None)
    home = "The Royal Borough of Kensington Residential and Nursing Home"
    _, text = start(survey, "Bartholomew-Alexander", home, position=1, total=2)
    assert home not in text
    assert text.startswith("Hi Bartholomew-Alexander, survey 1 of 2: the morale survey.")
    assert text.endswith("or SKIP. STOP to opt out")
    assert segments(text) == 1


def test_start_on_a_long_survey_keeps_the_question_whole() -> None:
    survey = Survey(SELF_REPORT.title, SELF_REPORT, None)
    _, text = start(survey, "Łukasz", "Willow Court")
    assert "How would you rate your stress level at work at the moment? Reply 1-5" in text
    assert text.endswith("STOP to opt out")
    assert encoding(text) == "GSM-7" and segments(text) == 1


def test_start_checks_position_and_total() -> None:
    survey = Survey("morale survey", MORALE, None)
    with pytest.raises(ValueError):
        start(survey, "Sam", "Willow Court", position=1)
    with pytest.raises(ValueError):
        start(survey, "Sam", "Willow Court", position=3, total=2)


@pytest.mark.parametrize(
    ("invalid", "expected"),
    [
        (Invalid("ambiguous", (3, 4)), "Please choose one number: 3 or 4?"),
        (Invalid("ambiguous", (2, 3, 4)), "Please choose one number: 2, 3 or 4?"),
        (Invalid("ambiguous"), "Sorry, please reply with just one number from 1 to 5, or SKIP."),
        (Invalid("out_of_range", (9,)), "9 is not on the scale. Please reply 1-5, or SKIP."),
        (Invalid("out_of_range"), "That number is not on the scale. Please reply 1-5, or SKIP."),
        (
            Invalid("not_a_number"),
            "Sorry, please reply with one number from 1 to 5 (1=Very low, 5=Very high), or SKIP.",
        ),
        (
            Invalid("empty"),
            "Sorry, your message was empty. Please reply with one number from 1 to 5"
            " (1=Very low, 5=Very high), or SKIP.",
        ),
    ],
)
def test_reask_reply(invalid: Invalid, expected: str) -> None:
    assert reask_reply(invalid, LEVEL) == expected


def test_thank_you() -> None:
    assert thank_you_reply("Zoë") == (
        "Thank you, Zoe - that's everything. Your answers help improve your care home."
    )
    assert thank_you_reply(None).startswith("Thank you - that's everything.")
    assert "next one" in thank_you_reply("Zoë", more_surveys=True)


# --------------------------------------------------------------------------- conversations


def _check(messages: Sequence[str]) -> None:
    for message in messages:
        assert segments(message) == 1, message
        assert encoding(message) == "GSM-7", message


def _converse(
    survey: Survey,
    replies: Sequence[str],
    *,
    max_tries: int = 2,
    signposts: Sequence[Signpost] = (),
    state: State | None = None,
) -> tuple[State, dict[str, int | None], list[Outcome]]:
    """Start a survey and send `replies`, storing the state as JSON between texts as the
    bot layer does. Returns the last state, the answers and every outcome."""
    if state is None:
        state, opening = start(survey, "Siân", "Willow Court")
        _check([opening])
    answers: dict[str, int | None] = {}
    outcomes = []
    for reply in replies:
        outcome = step(survey, state, reply, max_tries=max_tries, signposts=signposts)
        _check(outcome.replies)
        assert outcome.finished == outcome.state.finished
        if outcome.answer is not None:
            item_id, value = outcome.answer
            assert item_id not in answers
            answers[item_id] = value
        outcomes.append(outcome)
        state = State.from_dict(json.loads(json.dumps(outcome.state.to_dict())))
    return state, answers, outcomes


def test_whole_360_conversation_as_staff() -> None:
    survey = Survey("manager 360", APPRAISAL, "staff")
    replies = ["4", "5", "SKIP", "3 or 4", "3", "agree", "dunno", "no idea", "4/5", "2", "5", "1"]
    state, answers, outcomes = _converse(survey, replies)
    assert answers == {
        "residents_involvement": 4,
        "staff_development": 5,
        "staff_praise": None,  # SKIP
        "listens_to_staff": 3,  # after "3 or 4" was re-asked
        "new_ideas": 4,
        "interaction_quality": None,  # two unclear replies: moved on
        "management_quality": 4,
        "stakeholder_influence": 2,
        "spots_issues": 5,
        "acts_on_feedback": 1,
    }
    assert not state.finished and state.position == 10
    assert outcomes[0].replies == (question(survey, State(position=1)),)
    assert outcomes[0].replies[0].startswith("Q2/11 My manager encourages staff")
    assert outcomes[3].replies == ("Please choose one number: 3 or 4?",)
    assert outcomes[3].answer is None and outcomes[3].state.tries == 1
    assert outcomes[4].state.tries == 0
    assert outcomes[6].answer is None
    assert outcomes[7].answer == ("interaction_quality", None)
    assert outcomes[7].replies[0].startswith(f"{GIVE_UP_NOTE} Q7/11 My manager manages")

    last = step(survey, state, "5 - brilliant")
    assert last.answer == ("mentors_staff", 5)
    assert last.finished and last.state.finished
    assert last.replies == (thank_you_reply(),)


def test_whole_360_conversation_as_self_uses_the_self_wording() -> None:
    survey = Survey("manager 360", APPRAISAL, "self")
    state, answers, outcomes = _converse(survey, ["4"] * 11)
    assert state.finished and len(answers) == 11 and set(answers.values()) == {4}
    assert outcomes[0].replies[0].startswith("Q2/11 I encourage staff to develop their skills.")
    assert all("My manager" not in r for o in outcomes for r in o.replies)


def test_whole_self_report_conversation_with_a_signpost() -> None:
    survey = Survey("manager survey", SELF_REPORT, None)
    replies = ["5", "very high", "Not at all", "skip", "Very good", *(["3"] * 10)]
    state, answers, outcomes = _converse(survey, replies, signposts=[HIGH_STRESS, LOW_MORALE])
    assert state.finished and state.position == 15
    assert len(answers) == 15
    assert answers["stress"] == 5
    assert answers["enthusiasm"] == 5
    assert answers["feeling_valued"] == 1
    assert answers["job_satisfaction"] is None
    assert answers["quality_of_life"] == 5
    # The signpost comes straight after the answer, before the next question.
    assert outcomes[0].replies == (HIGH_STRESS.text, question(survey, State(position=1)))
    assert state.signposted == ("feeling-hard",)
    assert outcomes[-1].replies == (thank_you_reply(),)


def test_morale_conversation_with_signpost_then_thanks() -> None:
    survey = Survey("morale survey", MORALE, None)
    state, answers, outcomes = _converse(survey, ["1"], signposts=[LOW_MORALE])
    assert answers == {"morale": 1}
    assert outcomes[0].replies == (LOW_MORALE.text, thank_you_reply())
    assert state.finished and state.signposted == ("low-morale",)


def test_a_signpost_is_sent_only_once_per_conversation_state() -> None:
    survey = Survey("morale survey", MORALE, None)
    # A later survey whose stored state already records the signpost: not sent again.
    carried = State(signposted=("low-morale",))
    _, answers, outcomes = _converse(survey, ["1"], signposts=[LOW_MORALE], state=carried)
    assert answers == {"morale": 1}
    assert outcomes[0].replies == (thank_you_reply(),)
    assert outcomes[0].state.signposted == ("low-morale",)
    # Two signposts with the same id on different items: the message goes once.
    again = Signpost("feeling-hard", "manager_self_report", "enthusiasm", {1}, "Help is here.")
    self_survey = Survey("manager survey", SELF_REPORT, None)
    _, _, outcomes = _converse(self_survey, ["5", "1"], signposts=[HIGH_STRESS, again])
    assert outcomes[0].replies[0] == HIGH_STRESS.text
    assert len(outcomes[1].replies) == 1
    # Signposts only follow answers: not skips, not other answers, not other instruments.
    _, _, outcomes = _converse(survey, ["skip"], signposts=[LOW_MORALE])
    assert outcomes[0].replies == (thank_you_reply(),)
    _, _, outcomes = _converse(survey, ["2"], signposts=[LOW_MORALE, HIGH_STRESS])
    assert outcomes[0].replies == (thank_you_reply(),)


@pytest.mark.parametrize("max_tries", [1, 2, 3])
def test_failed_tries_then_move_on(max_tries: int) -> None:
    survey = Survey("manager 360", APPRAISAL, "staff")
    state, answers, outcomes = _converse(survey, ["good"] * max_tries, max_tries=max_tries)
    for outcome in outcomes[:-1]:
        assert outcome.answer is None
        assert outcome.replies[0].startswith("Sorry, please reply with one number from 1 to 5")
    assert [o.state.tries for o in outcomes[:-1]] == list(range(1, max_tries))
    assert outcomes[-1].answer == ("residents_involvement", None)
    assert outcomes[-1].replies == (question(survey, State(position=1), intro=GIVE_UP_NOTE),)
    assert outcomes[-1].replies[0].startswith("No problem, let's move on. Q2/11")
    assert state == State(position=1)
    assert answers == {"residents_involvement": None}


def test_giving_up_on_the_last_question_thanks() -> None:
    survey = Survey("morale survey", MORALE, None)
    state, answers, outcomes = _converse(survey, ["9", "0"])
    assert outcomes[0].replies == ("9 is not on the scale. Please reply 1-5, or SKIP.",)
    assert answers == {"morale": None}
    assert outcomes[1].finished and outcomes[1].replies == (thank_you_reply(),)


def test_giving_up_drops_the_note_when_it_does_not_fit() -> None:
    survey = Survey("manager 360", APPRAISAL, "staff")
    before = APPRAISAL.item_ids.index("stakeholder_influence") - 1
    outcome = step(survey, State(position=before, tries=1), "no")
    assert outcome.answer == ("management_quality", None)
    # The note would push the long Q8 past one segment: the question goes alone, labels kept.
    assert outcome.replies == (question(survey, State(position=before + 1)),)
    assert outcome.replies[0].startswith("Q8/11 My manager works well")
    assert outcome.replies[0].endswith("(1=Strongly disagree, 5=Strongly agree) or SKIP")


def test_reply_after_finish() -> None:
    survey = Survey("morale survey", MORALE, None)
    state, _, _ = _converse(survey, ["4"])
    after = step(survey, state, "5")
    assert after == Outcome(state, None, (already_finished_reply(),), True)
    named = step(survey, state, "hello", first_name="Zoë")
    assert named.replies == (
        "Thanks, Zoe - you've already answered this survey, so there's nothing more to do.",
    )
    # A stored position past the end counts as finished too.
    beyond = step(survey, State(position=1), "4")
    assert beyond.finished and beyond.answer is None and beyond.state.finished


def test_step_personalises_the_thank_you_and_announces_the_next_survey() -> None:
    survey = Survey("morale survey", MORALE, None)
    outcome = step(survey, State(), "4", first_name="Łukasz", more_surveys=True)
    assert outcome.replies == (thank_you_reply("Łukasz", more_surveys=True),)
    assert outcome.replies[0].startswith("Thank you, Lukasz - that's this survey done.")


def test_step_refuses_a_max_tries_below_one() -> None:
    with pytest.raises(ValueError):
        step(Survey("morale survey", MORALE, None), State(), "4", max_tries=0)
