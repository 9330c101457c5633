"""Item scores, scale scores and Cronbach's alpha on small hand-built frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reports.disclosure import SUPPRESSED
from reports.scales import (
    RELIABILITY_COLUMNS,
    SCALE_SCORE_COLUMNS,
    cronbach_alpha,
    reliability,
    scale_scores,
    score,
)
from tests.support.frames import answers_of, items_of

WELLBEING = ("stress", "enthusiasm", "feeling_valued", "job_satisfaction")


def _items(rows, version=1, instrument="manager_self_report"):
    """Items on a 1-5 scale: (item_id, reverse, scales)."""
    return items_of(rows, instrument, version)


def _answers(rows, instrument="manager_self_report", version=1, relation=None):
    """Managers' answers on the web: (wave, person_id, item_id, value[, subject_id])."""
    return answers_of(
        rows, instrument, role="manager", channel="web", version=version, relation=relation
    )


def _wellbeing_items():
    return _items([(item, item == "stress", ("wellbeing",)) for item in WELLBEING])


def test_reverse_scored_items_are_reversed_before_the_scale_is_formed():
    answers = _answers(
        [
            ("baseline", 1, "stress", 5),
            ("baseline", 1, "enthusiasm", 4),
            ("baseline", 1, "feeling_valued", 4),
        ]
    )
    items = _wellbeing_items()
    scored = score(answers, items)
    assert dict(zip(scored["item_id"], scored["score"], strict=True)) == {
        "stress": 1.0,  # very high stress is the worst outcome: 1 + 5 - 5
        "enthusiasm": 4.0,
        "feeling_valued": 4.0,
    }
    assert list(scored["value"]) == [5, 4, 4]  # the stored answers are untouched
    scales = scale_scores(scored, items)
    assert list(scales.columns) == list(SCALE_SCORE_COLUMNS)
    row = scales.iloc[0]
    assert (row["scale"], row["n_items"], row["n_items_answered"]) == ("wellbeing", 4, 3)
    assert row["score"] == pytest.approx(3.0)  # (1 + 4 + 4) / 3, not (5 + 4 + 4) / 3


def test_reversal_follows_the_instrument_version_the_answer_was_given_to():
    items = pd.concat([_items([("stress", True, ())], 1), _items([("stress", False, ())], 2)])
    answers = pd.concat(
        [
            _answers([("baseline", 1, "stress", 2)], version=1),
            _answers([("end", 1, "stress", 2)], version=2),
        ]
    )
    assert list(score(answers, items)["score"]) == [4.0, 2.0]


def test_an_item_the_items_frame_does_not_know_is_scored_as_given():
    scored = score(_answers([("baseline", 1, "unknown_item", 3)]), _wellbeing_items())
    assert list(scored["score"]) == [3.0]


def test_a_reverse_item_without_a_scale_range_is_refused():
    items = _items([("stress", True, ())]).assign(scale_min=None, scale_max=None)
    with pytest.raises(ValueError, match="stress"):
        score(_answers([("baseline", 1, "stress", 2)]), items)


@pytest.mark.parametrize(
    ("answered", "min_share", "expected"),
    [
        (1, 0.5, math.nan),  # 1 of 4 items: below half
        (2, 0.5, 2.5),  # 2 of 4: exactly half is enough
        (2, 0.75, math.nan),
        (3, 0.75, 3.0),
        (4, 1.0, 3.5),
    ],
)
def test_a_scale_score_needs_its_share_of_the_items(answered, min_share, expected):
    # stress (reversed) 4 -> 2, then 3, 4, 5.
    values = dict(zip(WELLBEING, [4, 3, 4, 5], strict=True))
    rows = [("baseline", 1, item, values[item]) for item in WELLBEING[:answered]]
    items = _wellbeing_items()
    row = scale_scores(score(_answers(rows), items), items, min_share=min_share).iloc[0]
    assert row["n_items_answered"] == answered
    if math.isnan(expected):
        assert math.isnan(row["score"])
    else:
        assert row["score"] == pytest.approx(expected)


def test_scale_scores_keep_each_rater_and_subject_of_a_360_apart():
    items = _items(
        [("a", False, ("support",)), ("b", False, ("support",))], instrument="appraisal_360"
    )
    rows = [
        ("baseline", 7, "a", 4, 100),
        ("baseline", 7, "b", 2, 100),
        ("baseline", 7, "a", 5, 200),
    ]
    answers = _answers(rows, instrument="appraisal_360", relation="staff")
    scales = scale_scores(score(answers, items), items).set_index("subject_id")
    assert scales.loc[100, "score"] == pytest.approx(3.0)
    assert scales.loc[200, "score"] == pytest.approx(5.0)
    assert set(scales["relation"]) == {"staff"}


def test_scale_scores_of_nothing_is_an_empty_table():
    items = _wellbeing_items()
    table = scale_scores(score(_answers([]), items), items)
    assert table.empty and list(table.columns) == list(SCALE_SCORE_COLUMNS)


def test_cronbach_alpha_on_a_hand_worked_example():
    wide = pd.DataFrame({"i1": [1, 2, 3, 4], "i2": [2, 2, 4, 4], "i3": [2, 3, 3, 4]})
    # Item variances (n - 1): 5/3, 4/3, 2/3, summing to 11/3. Totals 5, 7, 10, 12 have
    # mean 8.5, squares 29, variance 29/3. alpha = 3/2 * (1 - (11/3) / (29/3)) = 27/29.
    assert cronbach_alpha(wide) == pytest.approx(27 / 29)


def test_cronbach_alpha_equals_standardised_alpha_when_item_variances_are_equal():
    # Every item is a reordering of the same five answers, so every item variance is the
    # same and raw alpha must equal the standardised alpha k r / (1 + (k - 1) r), where r
    # is the mean inter-item correlation (Cronbach, 1951; the Spearman-Brown form).
    base = [1, 2, 3, 4, 5]
    wide = pd.DataFrame(
        {
            "a": base,
            "b": [2, 1, 3, 5, 4],
            "c": [1, 3, 2, 4, 5],
            "d": [3, 2, 1, 5, 4],
        }
    )
    k = wide.shape[1]
    correlations = np.corrcoef(wide.to_numpy().T)
    mean_r = correlations[np.triu_indices(k, 1)].mean()
    assert cronbach_alpha(wide) == pytest.approx(k * mean_r / (1 + (k - 1) * mean_r))


def test_cronbach_alpha_uses_complete_rows_and_needs_two_items():
    wide = pd.DataFrame({"i1": [1, 2, 3, 4, 5], "i2": [2, 2, 4, 4, None], "i3": [2, 3, 3, 4, 1]})
    assert cronbach_alpha(wide) == pytest.approx(27 / 29)  # the fifth row is incomplete
    assert math.isnan(cronbach_alpha(wide[["i1"]]))
    identical = pd.DataFrame({"i1": [1, 2, 3], "i2": [1, 2, 3]})
    assert cronbach_alpha(identical) == pytest.approx(1.0)


def _hand_worked_answers(wave="baseline", people=(1, 2, 3, 4)):
    """The hand-worked example as answers; i3 is stored as a reverse-worded item would be
    answered (6 - value), and marked reverse."""
    table = {"i1": [1, 2, 3, 4], "i2": [2, 2, 4, 4], "i3": [6 - v for v in (2, 3, 3, 4)]}
    return [
        (wave, p, item, table[item][n]) for item, _ in table.items() for n, p in enumerate(people)
    ]


def test_reliability_scores_reverse_items_first_and_counts_complete_cases():
    items = _items([("i1", False, ("s",)), ("i2", False, ("s",)), ("i3", True, ("s",))])
    rows = _hand_worked_answers() + [("baseline", 5, "i1", 5), ("baseline", 5, "i2", 5)]
    table = reliability(score(_answers(rows), items), items, threshold=4)
    assert list(table.columns) == list(RELIABILITY_COLUMNS)
    row = table.iloc[0]
    assert (row["wave"], row["instrument"], row["relation"], row["scale"]) == (
        "baseline",
        "manager_self_report",
        "-",
        "s",
    )
    assert (row["n"], row["k"]) == (4, 3)  # person 5 skipped i3
    assert row["alpha"] == pytest.approx(27 / 29)


def test_an_item_nobody_answered_leaves_no_complete_case():
    items = _items([("i1", False, ("s",)), ("i2", False, ("s",)), ("i9", False, ("s",))])
    rows = [row for row in _hand_worked_answers() if row[2] != "i3"]
    row = reliability(score(_answers(rows), items), items, threshold=4).iloc[0]
    assert (row["n"], row["k"]) == (0, 3) and math.isnan(row["alpha"])


def test_reliability_is_suppressed_for_few_respondents_and_undefined_for_one_item():
    items = _items(
        [
            ("i1", False, ("s",)),
            ("i2", False, ("s",)),
            ("i3", True, ("s",)),
            ("i4", False, ("one",)),
        ]
    )
    rows = _hand_worked_answers() + [("baseline", p, "i4", 3) for p in (1, 2, 3, 4)]
    table = reliability(score(_answers(rows), items), items, threshold=5).set_index("scale")
    assert table.loc["s", "n"] == SUPPRESSED and table.loc["s", "alpha"] == SUPPRESSED
    assert table.loc["one", "k"] == 1 and math.isnan(table.loc["one", "alpha"])


def test_reliability_of_nothing_is_an_empty_table():
    items = _wellbeing_items()
    table = reliability(score(_answers([]), items), items, threshold=5)
    assert table.empty and list(table.columns) == list(RELIABILITY_COLUMNS)
