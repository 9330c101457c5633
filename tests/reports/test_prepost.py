"""Pre/post change: paired and unmatched tests against published or hand-worked values,
multiplicity, disclosure control, and the real frames from the database."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sqlalchemy import select

from reports.disclosure import SUPPRESSED
from reports.frames import answers_frame, items_frame
from reports.prepost import PREPOST_COLUMNS, hedges_g, holm, prepost, wilcoxon_p
from storage.models import Invitation
from surveys.answers import record_answer
from surveys.invitations import open_wave
from tests.support.frames import answers_of, items_of

MATCHED = ["n_pairs", "mean_pre", "mean_post", "mean_diff", "ci95_low", "ci95_high"]
MATCHED += ["t", "df", "p_t", "d_z", "wilcoxon_p", "p_holm"]
UNMATCHED = ["n_pre_only", "n_post_only", "unmatched_test", "unmatched_stat"]
UNMATCHED += ["unmatched_df", "unmatched_p", "hedges_g"]

# R's `sleep` data: extra hours of sleep for the same ten people (ID 1..10) on two drugs.
SLEEP_GROUP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_GROUP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def _items(rows, instrument="staff_morale"):
    """Items on a 1-5 scale: (item_id, reverse, scales)."""
    return items_of(rows, instrument)


MORALE = _items([("morale", False, ("morale",))])


def _answers(rows, instrument="staff_morale", relation=None):
    """Care workers' answers by SMS: (wave, person_id, item_id, value[, subject_id])."""
    return answers_of(rows, instrument, role="care_worker", channel="sms", relation=relation)


def _waves(pre, post, item="morale", pre_people=None, post_people=None):
    """Answers to one item: `pre[i]` from pre_people[i], `post[i]` from post_people[i]
    (by default the same people 1, 2, ... in both waves)."""
    pre_people = pre_people or range(1, len(pre) + 1)
    post_people = post_people or range(1, len(post) + 1)
    rows = [("baseline", p, item, v) for p, v in zip(pre_people, pre, strict=True)]
    rows += [("end", p, item, v) for p, v in zip(post_people, post, strict=True)]
    return _answers(rows)


def _row(table, measure="item", measure_id="morale"):
    found = table[(table["measure"] == measure) & (table["measure_id"] == measure_id)]
    assert len(found) == 1
    return found.iloc[0]


def _sig(value, digits=4):
    return f"{value:.{digits}g}"


@pytest.mark.parametrize("measure", ["item", "scale"])
def test_paired_figures_match_r_on_the_sleep_data(measure):
    # t.test(g1, g2, paired = TRUE) and wilcox.test(g1, g2, paired = TRUE) in R, with
    # group 2 as pre and group 1 as post (so differences are group 1 - group 2).
    answers = _waves(SLEEP_GROUP_2, SLEEP_GROUP_1)
    row = _row(prepost(answers, MORALE, "baseline", "end", threshold=5), measure)
    assert row["relation"] == "-" and row["n_pairs"] == 10
    assert row["mean_diff"] == pytest.approx(-1.58)
    assert _sig(row["t"]) == _sig(-4.0621)
    assert row["df"] == 9
    assert _sig(row["p_t"]) == _sig(0.002833)
    assert (_sig(row["ci95_low"]), _sig(row["ci95_high"])) == (_sig(-2.4599), _sig(-0.7001))
    assert _sig(row["d_z"]) == _sig(-1.2846)
    # One zero difference and a tie (-1.3 twice): R uses the normal approximation.
    assert _sig(row["wilcoxon_p"]) == _sig(0.009091)
    # Everyone answered both waves: the partially overlapping t is the paired t.
    assert row["unmatched_test"] == "partially_overlapping"
    assert row["unmatched_stat"] == pytest.approx(row["t"])
    assert row["unmatched_df"] == pytest.approx(9)
    assert row["unmatched_p"] == pytest.approx(row["p_t"])
    assert (row["n_pre_only"], row["n_post_only"]) == (0, 0) and math.isnan(row["hedges_g"])


def test_wilcoxon_is_exact_without_ties_or_zeros_below_fifty_pairs():
    # Ten distinct positive differences: V takes its most extreme value, which has
    # probability 1 / 2^10 on each side, so the exact two-sided p is 2 / 2^10.
    assert wilcoxon_p([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == pytest.approx(2 / 2**10)


def _r_normal_approximation(v, n, tie_sizes=()):
    """R's wilcox.test p without an exact distribution, written out from its source."""
    sigma = math.sqrt(n * (n + 1) * (2 * n + 1) / 24 - sum(t**3 - t for t in tie_sizes) / 48)
    z = v - n * (n + 1) / 4
    z = (z - math.copysign(0.5, z)) / sigma
    return 2 * min(stats.norm.cdf(z), stats.norm.sf(z))


def test_wilcoxon_uses_the_corrected_normal_approximation_like_r():
    # A zero difference (dropped, n = 5) forbids the exact p in R, however small n is.
    assert wilcoxon_p([0, 1, 2, 3, 4, 5]) == pytest.approx(_r_normal_approximation(15, 5))
    # Fifty distinct differences: not below 50, so normal (R's exact limit is n < 50).
    fifty = list(range(1, 51))
    assert wilcoxon_p(fifty) == pytest.approx(_r_normal_approximation(1275, 50))
    # Ties among 1, -2, 2 (ranks 2.5 twice): V = 1 + 2.5 + 3 + ... + 15 - 5 = 112.5.
    tied = [1, -2, 2, 3, -4, *range(5, 15)]
    assert wilcoxon_p(tied) == pytest.approx(_r_normal_approximation(112.5, 15, [2]))
    assert math.isnan(wilcoxon_p([0, 0, 0]))


PRE_ONLY = [2, 3, 4, 3, 3]  # mean 3, variance 0.5
POST_ONLY = [3, 4, 5, 4, 4]  # mean 4, variance 0.5


def test_with_nobody_in_both_waves_the_unmatched_test_is_welchs_t():
    answers = _waves(PRE_ONLY, POST_ONLY, pre_people=range(1, 6), post_people=range(11, 16))
    row = _row(prepost(answers, MORALE, "baseline", "end", threshold=5))
    welch = stats.ttest_ind(POST_ONLY, PRE_ONLY, equal_var=False)
    assert row["unmatched_test"] == "welch"
    assert row["unmatched_stat"] == pytest.approx(welch.statistic)
    assert row["unmatched_df"] == pytest.approx(welch.df)
    assert row["unmatched_p"] == pytest.approx(welch.pvalue)
    assert (row["n_pairs"], row["n_pre_only"], row["n_post_only"]) == (0, 5, 5)
    assert math.isnan(row["t"]) and row["note"] == "nobody answered both waves"
    # Pooled SD sqrt(0.5), d = 1 / sqrt(0.5) = 1.41421; df m = 8, exact correction
    # J = Gamma(4) / (sqrt(4) Gamma(3.5)) = 6 / (2 * 3.32335) = 0.902703; g = 1.27662.
    # (The approximation 1 - 3 / (4m - 1) would give 1.2773.)
    assert _sig(row["hedges_g"], 5) == _sig(1.27662, 5)


def test_hedges_g_needs_two_people_a_side():
    assert math.isnan(hedges_g([3], [4, 5]))
    assert hedges_g(PRE_ONLY, POST_ONLY) == pytest.approx(1.27662, abs=1e-5)


def test_the_partially_overlapping_test_uses_paired_and_unpaired_respondents():
    pre_pairs, post_pairs = [2, 3, 3, 2, 4, 3], [3, 4, 3, 3, 5, 4]
    answers = _waves(
        pre_pairs + PRE_ONLY,
        post_pairs + POST_ONLY,
        pre_people=[*range(1, 7), *range(21, 26)],
        post_people=[*range(1, 7), *range(31, 36)],
    )
    row = _row(prepost(answers, MORALE, "baseline", "end", threshold=5))
    assert (row["n_pairs"], row["n_pre_only"], row["n_post_only"]) == (6, 5, 5)
    assert row["unmatched_test"] == "partially_overlapping"
    paired = stats.ttest_rel(post_pairs, pre_pairs)
    welch = stats.ttest_ind(post_pairs + POST_ONLY, pre_pairs + PRE_ONLY, equal_var=False)
    # With 6 of 11 people in each wave paired (positively correlated), the standard error
    # is below Welch's, and the df lie between the paired n - 1 and Welch's.
    assert row["unmatched_stat"] > welch.statistic > 0
    assert paired.df < row["unmatched_df"] < welch.df
    assert row["mean_diff"] == pytest.approx(5 / 6)
    assert row["hedges_g"] == pytest.approx(1.27662, abs=1e-5)


def test_holm_matches_r_p_adjust():
    # p.adjust(c(.01, .02, .03, .04, .05), "holm") in R.
    assert holm([0.01, 0.02, 0.03, 0.04, 0.05]) == pytest.approx([0.05, 0.08, 0.09, 0.09, 0.09])
    assert holm([]) == []
    # Unsorted, with ties and a cap at 1: p.adjust(c(.04, .001, .04, .3, .9), "holm").
    assert holm([0.04, 0.001, 0.04, 0.3, 0.9]) == pytest.approx([0.16, 0.005, 0.16, 0.6, 0.9])


def test_holm_agrees_with_statsmodels_on_random_families():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(6)
    for size in (1, 2, 7, 30):
        p = rng.uniform(0, 0.2, size)
        assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))


def test_items_and_scales_are_separate_holm_families():
    items = _items(
        [("a", False, ("first",)), ("b", False, ("first",)), ("c", False, ("second",))],
        instrument="staff_morale",
    )
    pre = {"a": [2, 3, 3, 2, 4, 3], "b": [3, 3, 2, 4, 3, 3], "c": [1, 2, 2, 3, 3, 2]}
    post = {"a": [3, 4, 3, 3, 5, 4], "b": [4, 3, 3, 4, 3, 5], "c": [2, 2, 3, 3, 4, 4]}
    rows = []
    for item in pre:
        for person in range(6):
            rows += [("baseline", person, item, pre[item][person])]
            rows += [("end", person, item, post[item][person])]
    table = prepost(_answers(rows), items, "baseline", "end", threshold=5)
    assert list(zip(table["measure"], table["measure_id"], strict=True)) == [
        ("item", "a"),
        ("item", "b"),
        ("item", "c"),
        ("scale", "first"),
        ("scale", "second"),
    ]
    item_p = table.loc[table["measure"] == "item", "p_t"].tolist()
    scale_p = table.loc[table["measure"] == "scale", "p_t"].tolist()
    # Holm multiplies the smallest p of a family by the family's size.
    item_holm = table.loc[table["measure"] == "item", "p_holm"].tolist()
    scale_holm = table.loc[table["measure"] == "scale", "p_holm"].tolist()
    assert min(item_holm) == pytest.approx(3 * min(item_p))
    assert min(scale_holm) == pytest.approx(2 * min(scale_p))
    assert item_holm == pytest.approx(holm(item_p)) and scale_holm == pytest.approx(holm(scale_p))


def test_reverse_scored_items_and_scales_are_compared_as_scores():
    items = _items([("stress", True, ("wellbeing",)), ("enthusiasm", False, ("wellbeing",))])
    rows = []
    for person in range(1, 7):
        rows += [("baseline", person, "stress", 5), ("end", person, "stress", 5 - person % 3)]
        rows += [("baseline", person, "enthusiasm", 2), ("end", person, "enthusiasm", 3)]
    table = prepost(_answers(rows, "manager_self_report"), items, "baseline", "end", 5)
    stress = _row(table, "item", "stress")
    # Stress 5 (score 1) at baseline; at the end 4, 3, 5, 4, 3, 5 (scores 2, 3, 1, ...).
    assert (stress["mean_pre"], stress["mean_post"]) == pytest.approx((1.0, 2.0))
    wellbeing = _row(table, "scale", "wellbeing")
    assert (wellbeing["mean_pre"], wellbeing["mean_post"]) == pytest.approx((1.5, 2.5))


def test_a_360_pairs_the_same_rater_about_the_same_manager_within_a_relation():
    items = _items([("listening", False, ())], instrument="appraisal_360")
    staff = [("baseline", p, "listening", 3, 100) for p in range(1, 7)]
    staff += [("end", p, "listening", 4 + p % 2, 100) for p in range(1, 6)]
    staff += [("end", 6, "listening", 5, 200)]  # person 6 now rates another manager
    own = [("baseline", 100, "listening", 4, 100), ("end", 100, "listening", 5, 100)]
    answers = pd.concat(
        [
            _answers(staff, "appraisal_360", relation="staff"),
            _answers(own, "appraisal_360", relation="self"),
        ]
    )
    table = prepost(answers, items, "baseline", "end", threshold=5).set_index("relation")
    assert list(table.index) == ["self", "staff"]
    assert table.loc["staff", "n_pairs"] == 5  # person 6 rated different managers
    assert table.loc["self", "n_pairs"] == SUPPRESSED  # one manager's own rating


def test_few_pairs_suppress_every_matched_figure_and_say_why():
    answers = _waves([2, 3, 4, 3], [3, 3, 5, 4])
    row = _row(prepost(answers, MORALE, "baseline", "end", threshold=5))
    assert all(row[column] == SUPPRESSED for column in MATCHED)
    assert "fewer than 5 people answered both waves" in row["note"]
    # Only 4 people answered each wave, so the unmatched test (the paired t here) goes too.
    assert all(row[column] == SUPPRESSED for column in UNMATCHED)


def test_a_small_unpaired_group_suppresses_the_unmatched_figures_only():
    answers = _waves(
        [2, 3, 3, 2, 4, 3, 1, 5], [3, 4, 3, 3, 5, 4], pre_people=[*range(1, 7), 21, 22]
    )
    row = _row(prepost(answers, MORALE, "baseline", "end", threshold=5))
    assert row["n_pairs"] == 6 and isinstance(row["t"], float)
    assert all(row[column] == SUPPRESSED for column in UNMATCHED)
    assert row["note"] == (
        "fewer than 5 people answered only the baseline wave, "
        "so the unmatched comparison is withheld"
    )


def _is_figure(value):
    return not (isinstance(value, str) or (isinstance(value, float) and math.isnan(value)))


@pytest.mark.parametrize(
    ("n_pairs", "n_pre_only", "n_post_only"),
    list(itertools.product([0, 1, 4, 5], repeat=3)),
)
def test_no_figure_is_shown_from_fewer_people_than_the_threshold(n_pairs, n_pre_only, n_post_only):
    pairs = [1 + (i * 3) % 5 for i in range(n_pairs)]
    pre = pairs + [1 + (i * 2) % 5 for i in range(n_pre_only)]
    post = [min(5, v + i % 2) for i, v in enumerate(pairs)]
    post += [1 + (i * 4) % 5 for i in range(n_post_only)]
    answers = _waves(
        pre,
        post,
        pre_people=[*range(n_pairs), *range(100, 100 + n_pre_only)],
        post_people=[*range(n_pairs), *range(200, 200 + n_post_only)],
    )
    if answers.empty:
        return
    row = _row(prepost(answers, MORALE, "baseline", "end", threshold=5))
    groups = [n_pre_only, n_post_only, n_pairs + n_pre_only, n_pairs + n_post_only]
    if 0 < n_pairs < 5:
        assert not any(_is_figure(row[c]) for c in MATCHED)
    if any(0 < n < 5 for n in groups):
        assert not any(_is_figure(row[c]) for c in UNMATCHED)
        assert row["note"]
    if n_pairs >= 5 and all(n == 0 or n >= 5 for n in groups):
        assert row["n_pairs"] == n_pairs and _is_figure(row["unmatched_stat"])


def test_every_item_of_the_instrument_has_a_row_even_if_unanswered():
    items = _items([("morale", False, ("morale",)), ("teamwork", False, ())])
    table = prepost(_waves([3] * 5, [4] * 5), items, "baseline", "end", threshold=5)
    teamwork = _row(table, "item", "teamwork")
    assert (teamwork["n_pairs"], teamwork["n_pre_only"], teamwork["n_post_only"]) == (0, 0, 0)
    assert teamwork["note"] == "nobody answered both waves"
    morale = _row(table)
    assert morale["mean_diff"] == 1 and math.isnan(morale["t"])
    assert morale["note"] == "every answer changed equally: no t test or d_z"


def test_empty_answers_give_an_empty_table_with_the_columns():
    table = prepost(_answers([]), MORALE, "baseline", "end", threshold=5)
    assert table.empty and list(table.columns) == list(PREPOST_COLUMNS)
    other_waves = _answers([("midpoint", 1, "morale", 3)])
    assert prepost(other_waves, MORALE.iloc[:0], "baseline", "end", threshold=5).empty


def test_pre_and_post_must_differ():
    with pytest.raises(ValueError):
        prepost(_answers([]), MORALE, "baseline", "baseline", threshold=5)


def test_prepost_on_the_stored_answers_of_a_programme(session, factory):
    homes = [factory.home() for _ in range(6)]
    managers = [factory.person(home, role="manager") for home in homes]
    programme, baseline = factory.programme(
        homes, [("manager_self_report", {"roles": ["manager"]}, None)]
    )
    end = factory.later_wave(
        baseline,
        opens=baseline.opens_at + dt.timedelta(days=180),
        closes=baseline.closes_at + dt.timedelta(days=180),
    )
    stress = {"baseline": [5, 4, 5, 5, 4, 5], "end": [3, 2, 4, 3, 3, 2]}
    for wave in (baseline, end):
        open_wave(session, wave, wave.opens_at)
        for n, manager in enumerate(managers):
            invitation = session.scalars(
                select(Invitation).where(
                    Invitation.wave_id == wave.id, Invitation.person_id == manager.id
                )
            ).one()
            record_answer(session, invitation, "stress", stress[wave.key][n], "web")
            record_answer(session, invitation, "enthusiasm", 3 + n % 2, "web")
    session.commit()

    answers = answers_frame(session, programme.key)
    table = prepost(answers, items_frame(session, programme.key), "baseline", "end", 5)
    stress_row = _row(table, "item", "stress")
    # Stress is reverse-scored: baseline scores 1, 2, 1, 1, 2, 1; end 3, 4, 2, 3, 3, 4.
    assert stress_row["relation"] == "-" and stress_row["n_pairs"] == 6
    assert (stress_row["mean_pre"], stress_row["mean_post"]) == pytest.approx((8 / 6, 19 / 6))
    expected = stats.ttest_rel([3, 4, 2, 3, 3, 4], [1, 2, 1, 1, 2, 1])
    assert stress_row["t"] == pytest.approx(expected.statistic)
    # Wellbeing has 5 items; 2 answered is under half, so there is no wellbeing score.
    wellbeing = _row(table, "scale", "wellbeing")
    assert wellbeing["n_pairs"] == 0 and wellbeing["note"] == "nobody answered both waves"
    assert len(table[table["measure"] == "item"]) == 15  # every item of the instrument
