"""360 self versus others: small rater groups suppressed whole and kept out of "others",
subscales from per-rater scores, change between waves, the cohort pooled, and one
manager's own report."""

from __future__ import annotations

import datetime as dt
import itertools

import pandas as pd
import pytest

from reports.disclosure import SUPPRESSED
from reports.three_sixty import (
    MANAGER_ITEM_COLUMNS,
    POOLED_COLUMNS,
    SELF_VS_OTHERS_COLUMNS,
    manager_report,
    pooled_self_vs_others,
    self_vs_others,
)

MIN_RATERS = {"self": 1, "staff": 5, "line_manager": 1, "peer": 3}
OPENS = {
    "baseline": dt.datetime(2027, 1, 4, 9, tzinfo=dt.UTC),
    "midpoint": dt.datetime(2027, 4, 5, 9, tzinfo=dt.UTC),
    "end": dt.datetime(2027, 7, 5, 9, tzinfo=dt.UTC),
}


def _item(position, item_id, scale, reverse=False):
    """An appraisal_360 item of version 1 on a 1-5 scale, in one subscale."""
    return {
        "instrument": "appraisal_360",
        "instrument_version_id": 1,
        "position": position,
        "item_id": item_id,
        "text": f"My manager ... ({item_id})",
        "scale_min": 1,
        "scale_max": 5,
        "reverse": reverse,
        "scales": (scale,),
    }


ITEMS = pd.DataFrame(
    [
        _item(1, "staff_praise", "supporting_staff"),
        _item(2, "listens_to_staff", "supporting_staff"),
        _item(3, "management_quality", "leadership"),
        _item(4, "blames_staff", "leadership", reverse=True),
        _item(5, "spots_issues", "leadership"),
    ]
)
_people = itertools.count(1000)


def _ratings(subject, relation, values, wave="baseline", item="staff_praise", cohort="c1"):
    """One answer to `item` per value, each from a new rater (the manager for self)."""
    rows = []
    for value in values:
        rater = subject if relation == "self" else next(_people)
        rows.append(_row(subject, relation, rater, item, value, wave, cohort))
    return rows


def _row(subject, relation, rater, item, value, wave="baseline", cohort="c1"):
    return {
        "invitation_id": next(_people),
        "cohort": cohort,
        "wave": wave,
        "wave_kind": wave,
        "wave_opens_at": OPENS[wave],
        "instrument": "appraisal_360",
        "instrument_version_id": 1,
        "relation": relation,
        "person_id": rater,
        "subject_id": subject,
        "home": "Willow Court",
        "role": "manager" if relation == "self" else "care_worker",
        "item_id": item,
        "value": value,
        "channel": "web",
        "completed": True,
    }


def _frame(*groups):
    return pd.DataFrame([row for group in groups for row in group])


def _row_of(table, group, measure="staff_praise", wave="baseline", **where):
    match = table[(table["group"] == group) & (table["measure"] == measure)]
    match = match[match["wave"] == wave]
    for column, value in where.items():
        match = match[match[column] == value]
    assert len(match) == 1, match
    return match.iloc[0]


def test_a_staff_group_below_its_minimum_is_suppressed_and_left_out_of_others():
    answers = _frame(
        _ratings(7, "self", [3]),
        _ratings(7, "staff", [1, 1, 1, 1]),
        _ratings(7, "line_manager", [5]),
    )
    table = self_vs_others(answers, ITEMS, MIN_RATERS)
    assert list(table.columns) == list(SELF_VS_OTHERS_COLUMNS)
    staff = _row_of(table, "staff")
    assert (staff["n_raters"], staff["mean"], staff["gap"], staff["change"]) == (SUPPRESSED,) * 4
    line_manager = _row_of(table, "line_manager")
    assert (line_manager["n_raters"], line_manager["mean"]) == (1, 5.0)
    others = _row_of(table, "others")
    # Only the line manager: folding the four staff in would give (4 x 1 + 5) / 5 = 1.8.
    assert (others["n_raters"], others["mean"], others["gap"]) == (1, 5.0, 2.0)


def test_a_staff_group_at_its_minimum_is_shown_and_pooled_into_others():
    answers = _frame(
        _ratings(7, "self", [3]),
        _ratings(7, "staff", [1, 2, 2, 2, 3]),
        _ratings(7, "line_manager", [5]),
    )
    table = self_vs_others(answers, ITEMS, MIN_RATERS)
    staff = _row_of(table, "staff")
    assert (staff["n_raters"], staff["mean"]) == (5, 2.0)
    assert staff["gap"] == pytest.approx(-1.0)
    others = _row_of(table, "others")
    assert others["n_raters"] == 6
    assert others["mean"] == pytest.approx(15 / 6)
    assert list(table.loc[table["level"] == "item", "group"]) == [
        "self",
        "staff",
        "line_manager",
        "others",
    ]


def test_others_is_suppressed_when_every_rater_group_is_suppressed():
    # Two peers rated manager 7: too few to show, but not "0 raters" either.
    answers = _frame(_ratings(7, "self", [4]), _ratings(7, "peer", [2, 2]))
    others = _row_of(self_vs_others(answers, ITEMS, MIN_RATERS), "others")
    assert (others["n_raters"], others["mean"], others["gap"]) == (SUPPRESSED,) * 3


def test_a_relation_without_a_configured_minimum_needs_five_raters():
    four = _frame(_ratings(7, "self", [3]), _ratings(7, "peer", [4] * 4))
    assert _row_of(self_vs_others(four, ITEMS, {"self": 1}), "peer")["mean"] == SUPPRESSED
    five = _frame(_ratings(7, "self", [3]), _ratings(7, "peer", [4] * 5))
    assert _row_of(self_vs_others(five, ITEMS, {"self": 1}), "peer")["mean"] == 4.0


def test_a_subscale_is_the_mean_of_per_rater_scale_scores():
    # Rater A answers one of the two supporting_staff items, rater B both.
    answers = _frame(
        [_row(7, "staff", 1, "staff_praise", 5)],
        [_row(7, "staff", 2, "staff_praise", 1), _row(7, "staff", 2, "listens_to_staff", 3)],
    )
    table = self_vs_others(answers, ITEMS, {"staff": 2})
    scale = _row_of(table, "staff", measure="supporting_staff", level="scale")
    # A scores 5, B (1 + 3) / 2 = 2: the mean is 3.5 (a mean of item means would be 3).
    assert (scale["n_raters"], scale["mean"]) == (2, 3.5)


def test_a_scale_score_turns_reverse_items_round_and_needs_half_the_items():
    answers = _frame(
        [_row(7, "staff", 1, "management_quality", 4), _row(7, "staff", 1, "blames_staff", 1)],
        [_row(7, "staff", 2, "management_quality", 2), _row(7, "staff", 2, "blames_staff", 4)],
        [_row(7, "staff", 3, "management_quality", 5)],  # one of three: no scale score
    )
    table = self_vs_others(answers, ITEMS, {"staff": 2})
    scale = _row_of(table, "staff", measure="leadership", level="scale")
    # blames_staff 1 scores 5 and 4 scores 2. A: (4 + 5) / 2, B: (2 + 2) / 2.
    assert scale["n_raters"] == 2
    assert scale["mean"] == pytest.approx((4.5 + 2) / 2)
    assert _row_of(table, "staff", measure="blames_staff")["mean"] == 3.5
    assert _row_of(table, "staff", measure="management_quality")["n_raters"] == 3


def test_change_is_the_difference_from_the_same_group_in_the_previous_wave():
    answers = _frame(
        _ratings(7, "self", [3], "baseline"),
        _ratings(7, "staff", [3, 3, 3, 3, 3], "baseline"),
        _ratings(7, "self", [4], "midpoint"),
        _ratings(7, "staff", [4, 4, 4, 4, 3], "midpoint"),
        _ratings(7, "self", [5], "end"),
        _ratings(7, "staff", [5, 5, 5, 5], "end"),
    )
    table = self_vs_others(answers, ITEMS, MIN_RATERS)
    assert pd.isna(_row_of(table, "staff", wave="baseline")["change"])
    assert _row_of(table, "staff", wave="midpoint")["change"] == pytest.approx(0.8)
    assert _row_of(table, "self", wave="midpoint")["change"] == pytest.approx(1.0)
    # Four staff at the end: suppressed, and so is any change that would rest on them.
    assert _row_of(table, "staff", wave="end")["change"] == SUPPRESSED
    assert _row_of(table, "self", wave="end")["change"] == pytest.approx(1.0)
    # Others at the end has nobody shown: suppressed, and so is its change.
    assert _row_of(table, "others", wave="end")["change"] == SUPPRESSED

    kept = self_vs_others(answers, ITEMS, MIN_RATERS, waves=["end", "baseline"])
    assert set(kept["wave"]) == {"baseline", "end"}
    assert _row_of(kept, "self", wave="end")["change"] == pytest.approx(2.0)


def test_pooled_self_over_three_managers_is_suppressed_when_the_threshold_is_five():
    answers = _frame(
        *[_ratings(m, "self", [4]) for m in (1, 2, 3)],
        *[_ratings(m, "staff", [3, 3, 3, 3, 3]) for m in (1, 2, 3, 4, 5)],
        *[_ratings(m, "line_manager", [5]) for m in (1, 2, 3)],
        _ratings(6, "staff", [1, 1, 1, 1]),  # manager 6's staff: 4 raters, below 5
    )
    table = pooled_self_vs_others(answers, ITEMS, MIN_RATERS, threshold=5)
    assert list(table.columns) == list(POOLED_COLUMNS)
    self_row = _row_of(table, "self")
    assert (self_row["n_managers"], self_row["n_raters"], self_row["mean"]) == (SUPPRESSED,) * 3
    staff = _row_of(table, "staff")
    # Manager 6's four staff are suppressed for that manager, so not pooled either.
    assert (staff["n_managers"], staff["n_raters"], staff["mean"]) == (5, 25, 3.0)
    assert staff["gap"] == SUPPRESSED
    # Three line managers pooled are fewer than five: suppressed, and not in "others".
    assert _row_of(table, "line_manager")["mean"] == SUPPRESSED
    others = _row_of(table, "others")
    assert (others["n_raters"], others["mean"]) == (25, 3.0)


def test_a_pool_of_fewer_managers_than_the_threshold_is_suppressed_however_many_raters():
    # 15 staff raters, but only 3 managers: the pooled figure would show evaluators what is
    # close to individual managers' confidential reports.
    answers = _frame(*[_ratings(m, "staff", [3, 3, 3, 3, 3]) for m in (1, 2, 3)])
    table = pooled_self_vs_others(answers, ITEMS, MIN_RATERS, threshold=5)
    staff = _row_of(table, "staff")
    assert (staff["n_managers"], staff["n_raters"], staff["mean"]) == (SUPPRESSED,) * 3


def test_pooled_self_over_five_managers_is_shown():
    answers = _frame(
        *[
            _ratings(m, "self", [value])
            for m, value in zip(range(1, 6), [2, 3, 4, 5, 5], strict=True)
        ],
        *[_ratings(m, "staff", [3] * 5) for m in range(1, 6)],
    )
    table = pooled_self_vs_others(answers, ITEMS, MIN_RATERS, threshold=5)
    self_row = _row_of(table, "self")
    assert (self_row["n_managers"], self_row["mean"]) == (5, 3.8)
    assert _row_of(table, "others")["gap"] == pytest.approx(-0.8)


def test_a_manager_sees_their_own_self_rating_and_others_by_relation():
    answers = _frame(
        _ratings(7, "self", [5]),
        _ratings(7, "staff", [2, 2, 2, 2]),
        _ratings(7, "line_manager", [4]),
        _ratings(7, "self", [5], item="listens_to_staff"),
        _ratings(8, "self", [1]),  # another manager: not in this report
    )
    report = manager_report(answers, ITEMS, MIN_RATERS, subject_id=7)
    items = report["items"]
    assert list(items.columns) == list(MANAGER_ITEM_COLUMNS)
    own = _row_of(items, "self")
    assert (own["n_raters"], own["mean"]) == (1, 5.0)
    assert own["text"] == "My manager ... (staff_praise)"
    assert _row_of(items, "staff")["mean"] == SUPPRESSED
    assert _row_of(items, "others")["gap"] == pytest.approx(-1.0)
    assert _row_of(report["scales"], "self", measure="supporting_staff")["mean"] == 5.0
    raters = report["raters"].set_index("group")["n_raters"].to_dict()
    assert raters == {"self": 1, "staff": SUPPRESSED, "line_manager": 1, "others": 1}


def test_no_answers_give_empty_tables_with_their_columns():
    empty = pd.DataFrame([_row(7, "self", 7, "staff_praise", 3)]).iloc[0:0]
    assert list(self_vs_others(empty, ITEMS, MIN_RATERS).columns) == list(SELF_VS_OTHERS_COLUMNS)
    assert pooled_self_vs_others(empty, ITEMS, MIN_RATERS, 5).empty
    assert all(t.empty for t in manager_report(empty, ITEMS, MIN_RATERS, 7).values())


STAFF_ROLES = ["deputy_manager", "nurse", "senior_care_worker", "care_worker"]
AUDIENCE = {
    "subject_role": "manager",
    "raters": {"self": ["manager"], "staff": STAFF_ROLES, "line_manager": ["proprietor"]},
}


def test_stored_answers_read_through_the_frames(session, factory):
    from sqlalchemy import select

    from reports.frames import answers_frame, items_frame, min_raters
    from storage.models import Invitation
    from surveys.answers import complete_response, record_answer
    from surveys.invitations import open_wave

    home = factory.home("Willow Court")
    manager = factory.person(home, role="manager")
    staff = [factory.person(home, role="care_worker") for _ in range(6)]
    factory.person(home, role="proprietor")
    programme, wave = factory.programme([home], [("appraisal_360", AUDIENCE, None)])
    programme.settings = {"min_raters": {"staff": 5, "peer": 3, "line_manager": 1}}
    open_wave(session, wave, wave.opens_at)
    # The manager rates themself 5, the owner 4; only four of the six staff answer (2).
    values = {"self": 5, "line_manager": 4, "staff": 2}
    answered_staff = {s.id for s in staff[:4]}
    for invitation in session.scalars(
        select(Invitation).where(Invitation.subject_person_id == manager.id)
    ):
        if invitation.rater_relation == "staff" and invitation.person_id not in answered_staff:
            continue
        value = values[invitation.rater_relation]
        # Three of the six supporting_staff items: half, enough for a scale score.
        for item in ("listens_to_staff", "staff_praise", "mentors_staff"):
            record_answer(session, invitation, item, value, "web", wave.opens_at)
        complete_response(session, invitation, wave.opens_at)
    session.commit()

    key = programme.key
    answers, items = answers_frame(session, key), items_frame(session, key)
    table = self_vs_others(answers, items, min_raters(session, key))
    mine = table[(table["subject_id"] == manager.id) & (table["measure"] == "listens_to_staff")]
    by_group = mine.set_index("group")[["n_raters", "mean", "gap"]]
    assert list(by_group.index) == ["self", "staff", "line_manager", "others"]
    assert by_group.loc["staff"].tolist() == [SUPPRESSED] * 3
    assert by_group.loc["others"].tolist() == [1, 4.0, -1.0]
    scale = table[(table["level"] == "scale") & (table["group"] == "self")]
    assert scale[["measure", "n_raters", "mean"]].values.tolist() == [["supporting_staff", 1, 5.0]]
    # Items in the questionnaire's order, then the scale.
    measures = table.loc[table["group"] == "self", "measure"].tolist()
    assert measures == ["staff_praise", "listens_to_staff", "mentors_staff", "supporting_staff"]


def test_appraisals_asked_without_a_subject_are_left_out_not_a_crash():
    # A programme file may ask appraisal_360 of roles without naming whom it is about.
    rated = _ratings(1, "staff", [3, 3, 3, 3, 3])
    unrated = [dict(row, subject_id=None, relation=None) for row in _ratings(9, "staff", [1, 1])]
    answers = _frame(rated, unrated)
    pooled = pooled_self_vs_others(answers, ITEMS, MIN_RATERS, threshold=5)
    per_manager = self_vs_others(answers, ITEMS, MIN_RATERS)
    assert set(per_manager["subject_id"]) == {1}
    staff = per_manager[
        (per_manager["group"] == "staff") & (per_manager["measure"] == "staff_praise")
    ]
    assert staff[["n_raters", "mean"]].values.tolist() == [[5, 3.0]]
    assert set(pooled["group"]) >= {"staff"}
