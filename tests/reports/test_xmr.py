"""XmR charts: limits with moving-range screening, the four Making Data Count rules (each
with a series that fires it and one that nearly does), and the plain-language reading."""

from __future__ import annotations

import math

import pytest

from reports.disclosure import SUPPRESSED
from reports.xmr import reading, xmr

ORACLE = (1, 2, 1, 2, 10, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1)
QUIET = [5, 6] * 10  # a stable process: mean 5.5, every moving range 1


def _rules(values):
    return {(s.rule, s.direction, s.indices) for s in xmr(values).signals}


def test_oracle_limits_with_moving_range_screening():
    chart = xmr(ORACLE)
    assert round(chart.unpl, 2) == 4.60
    assert round(chart.mean, 2) == 1.94
    assert round(chart.lnpl, 2) == -0.72
    # The ranges into and out of the 10 (8 and 9) are screened out; the rest are all 1.
    assert chart.screened == (4, 5)
    assert chart.mr_bar == pytest.approx(1.0)
    assert chart.upper_near == pytest.approx(35 / 18 + 2.66 * 2 / 3)
    assert [s.rule for s in chart.signals] == ["beyond_limits"]
    assert chart.signals[0].indices == (4,)


def test_without_screening_the_oracle_limits_are_wider():
    chart = xmr(ORACLE, screen=False)
    # mr_bar = (1 + 1 + 1 + 8 + 9 + 12 x 1) / 17 = 32 / 17
    assert chart.mr_bar == pytest.approx(32 / 17)
    assert round(chart.unpl, 2) == 6.95
    assert round(chart.lnpl, 2) == -3.06
    assert chart.unpl > xmr(ORACLE).unpl and chart.lnpl < xmr(ORACLE).lnpl


def test_a_point_beyond_the_process_limits_is_a_signal():
    # mean 6, mr_bar 1 after screening the jump of 7: UNPL 8.66.
    assert _rules([5, 6] * 5 + [5, 12]) == {("beyond_limits", "up", (11,))}
    assert _rules([6, 5] * 5 + [6, -1]) == {("beyond_limits", "down", (11,))}


def test_a_point_just_inside_the_process_limits_is_not():
    chart = xmr([5, 6] * 5 + [5, 8.5])
    assert chart.unpl > 8.5
    assert chart.signals == ()


def test_seven_points_on_one_side_of_the_mean_are_a_shift():
    assert _rules([5, 6, 5, 6, 5, 6, 7, 8, 7, 8, 7, 8, 7]) == {
        ("shift", "up", (6, 7, 8, 9, 10, 11, 12))
    }


def test_six_points_on_one_side_are_not_a_shift():
    assert _rules([5, 6, 5, 6, 5, 6, 7, 8, 7, 8, 7, 8, 5]) == set()


def test_a_point_on_the_mean_breaks_a_run():
    values = [4, 5, 4, 5, 4, 5, 6, 6, 6, 5, 6, 6, 6, 4, 4, 4]
    chart = xmr(values)
    assert chart.mean == 5
    assert chart.signals == ()
    values[9] = 5.01  # now just above the mean: seven in a row
    assert ("shift", "up", tuple(range(6, 13))) in _rules(values)


def test_seven_rising_points_are_a_trend():
    values = [5, 6, 5, 6, 5, 6, 4.6, 4.8, 5.0, 5.2, 5.4, 5.6, 5.8, 5, 6]
    assert _rules(values) == {("trend", "up", (6, 7, 8, 9, 10, 11, 12))}
    falling = [6, 5, 6, 5, 6, 5, 5.8, 5.6, 5.4, 5.2, 5.0, 4.8, 4.6, 5, 6]
    assert _rules(falling) == {("trend", "down", (6, 7, 8, 9, 10, 11, 12))}


def test_six_rising_points_are_not_a_trend():
    assert _rules([5, 6, 5, 6, 5, 6, 4.6, 4.8, 5.0, 5.2, 5.4, 5.6, 5.5, 5, 6]) == set()
    # An equal pair breaks a trend too.
    assert _rules([5, 6, 5, 6, 5, 6, 4.6, 4.8, 5.0, 5.2, 5.2, 5.4, 5.6, 5, 6]) == set()


def test_two_of_three_points_beyond_the_same_near_limit_are_a_signal():
    up = xmr(QUIET + [8, 6, 8] + [5, 6] * 3)
    assert up.upper_near < 8 < up.unpl
    assert [(s.rule, s.direction, s.indices) for s in up.signals] == [
        ("two_of_three", "up", (20, 22))
    ]
    assert _rules(QUIET + [3, 5, 3] + [5, 6] * 3) == {("two_of_three", "down", (20, 22))}


def test_two_near_points_further_apart_or_on_opposite_sides_are_not():
    apart = xmr(QUIET + [8, 6, 6, 8] + [5, 6] * 3)
    assert apart.upper_near < 8 < apart.unpl
    assert apart.signals == ()
    opposite = xmr(QUIET + [8, 6, 3] + [5, 6] * 3)
    assert opposite.lower_near > 3 and opposite.upper_near < 8
    assert opposite.signals == ()


def test_trial_limits_under_twelve_points():
    assert xmr([5, 6] * 5 + [5]).trial_limits
    assert not xmr([5, 6] * 6).trial_limits


def test_gaps_are_left_out_of_the_limits_and_keep_their_place():
    with_gaps = xmr([5, 6, None, 5, 6, SUPPRESSED, 5, 6, 5, 6, 5, 6, 5, 12])
    assert with_gaps.n_points == 12
    assert math.isnan(with_gaps.values[2])
    # No moving range is taken across a gap: 5->6 and 5->6 around each gap only.
    assert math.isnan(with_gaps.moving_ranges[3]) and math.isnan(with_gaps.moving_ranges[6])
    assert with_gaps.mean == pytest.approx(xmr([5, 6] * 5 + [5, 12]).mean)
    assert [s.indices for s in with_gaps.signals] == [(13,)]


def test_anything_else_than_a_number_or_a_gap_is_refused():
    with pytest.raises(ValueError, match="not a number"):
        xmr([1, 2, "three"])
    with pytest.raises(ValueError, match="labels"):
        xmr([1, 2, 3], ["January"])


MONTHS = [f"{m} 2027" for m in ("January", "February", "March", "April", "May", "June")]
MONTHS += [f"{m} 2027" for m in ("July", "August", "September", "October", "November")]
MONTHS += ["December 2027"] + [f"{m} 2028" for m in ("January", "February", "March")]
MONTHS += [f"{m} 2028" for m in ("April", "May", "June")]


def test_reading_names_the_month_of_a_point_beyond_the_limits():
    text = reading(xmr(ORACLE, MONTHS))
    assert "Morale rose above its usual range (-0.72 to 4.60) in May 2027." in text
    assert "trial" not in text


def test_reading_says_when_there_is_no_signal_and_the_limits_are_trial():
    text = reading(xmr([5, 6] * 5, MONTHS[:10]), what="response rate")
    assert text.startswith("No signal of change: the points vary within the limits")
    assert "trial limits from 10 points" in text


def test_reading_describes_shifts_and_trends_with_their_first_and_last_points():
    shift = reading(xmr([5, 6, 5, 6, 5, 6, 7, 8, 7, 8, 7, 8, 7], MONTHS[:13]))
    assert "stayed above its average (6.54) for 7 points in a row, from July 2027 to" in shift
    assert "January 2028: a shift." in shift
    falling = [6, 5, 6, 5, 6, 5, 5.8, 5.6, 5.4, 5.2, 5.0, 4.8, 4.6, 5, 6]
    trend = reading(xmr(falling, MONTHS[:15]), what="morale")
    assert "Morale fell for 7 points in a row, from July 2027 to January 2028: a trend." in trend


def test_reading_counts_the_gaps_and_needs_two_neighbouring_points():
    gaps = reading(xmr([5, 6, None, 5, 6, SUPPRESSED] + [5, 6] * 4))
    assert "2 points had too few answers to show and are left out of the limits." in gaps
    assert reading(xmr([4, None, 5])).startswith("Too few morale points to read")
