"""Morale by home, cohort and wave, small groups suppressed; and the pulse series on an
XmR chart, with suppressed months as gaps left out of the limits."""

from __future__ import annotations

import datetime as dt
import itertools
import statistics

import pandas as pd
import pytest

from reports.disclosure import SUPPRESSED
from reports.frames import ANSWER_COLUMNS
from reports.morale import MORALE_FIGURES, PULSE_FIGURES, morale_by_group, pulse_series
from reports.xmr import xmr

BASELINE = dt.datetime(2027, 1, 4, 9, tzinfo=dt.UTC)
END = dt.datetime(2027, 7, 5, 9, tzinfo=dt.UTC)
_ids = itertools.count(1)


def _answer(person, value, wave="baseline", opens=BASELINE, home="Willow Court", **extra):
    row = {
        "invitation_id": next(_ids),
        "cohort": "c1",
        "wave": wave,
        "wave_kind": "pulse" if wave.startswith("pulse") else wave,
        "wave_opens_at": opens,
        "instrument": "staff_morale",
        "instrument_version_id": 3,
        "relation": None,
        "person_id": person,
        "subject_id": None,
        "home": home,
        "role": "care_worker",
        "item_id": "morale",
        "value": value,
        "channel": "sms",
        "completed": True,
    }
    row.update(extra)
    return row


def _home(home, values, first_person, wave="end", opens=END):
    return [_answer(first_person + i, v, wave, opens, home=home) for i, v in enumerate(values)]


def test_morale_by_home_and_wave_with_small_homes_suppressed():
    rows = _home("Willow Court", [2, 3, 3, 4, 5], 1, "baseline", BASELINE)
    rows += _home("Willow Court", [4, 4, 5, 5, 3, 4], 1, "end", END)
    rows += _home("Elm House", [1, 2, 2], 20, "baseline", BASELINE)
    rows += _home("Birch Lodge", [4, 5], 30, "baseline", BASELINE)
    # A manager's self-report answer is not morale, and must not be counted.
    rows.append(_answer(99, 1, instrument="manager_self_report", item_id="morale"))
    table = morale_by_group(pd.DataFrame(rows), threshold=5)
    assert list(table.columns) == ["home", "wave", *MORALE_FIGURES]
    # Homes by name, then waves in the order they opened.
    assert list(zip(table["home"], table["wave"], strict=True)) == [
        ("Birch Lodge", "baseline"),
        ("Elm House", "baseline"),
        ("Willow Court", "baseline"),
        ("Willow Court", "end"),
    ]
    willow = table.iloc[2]
    assert (willow["n_respondents"], willow["mean"]) == (5, 3.4)
    assert willow["sd"] == pytest.approx(statistics.stdev([2, 3, 3, 4, 5]))
    # Birch (2) and Elm (3) are hidden together: 5 people between them, so the wave's
    # total less Willow Court describes no smaller group.
    for small in table.iloc[:2].to_dict("records"):
        assert (small["n_respondents"], small["mean"], small["sd"]) == (SUPPRESSED,) * 3


def test_a_lone_small_home_takes_the_next_smallest_with_it():
    # Otherwise the cohort's morale (8 people, shown) less Willow Court's would give away
    # Elm House's three answers.
    rows = _home("Willow Court", [2, 3, 3, 4, 5], 1, "baseline", BASELINE)
    rows += _home("Elm House", [1, 2, 2], 20, "baseline", BASELINE)
    by_home = morale_by_group(pd.DataFrame(rows), ("home", "wave"), threshold=5)
    assert list(by_home["n_respondents"]) == [SUPPRESSED, SUPPRESSED]
    by_cohort = morale_by_group(pd.DataFrame(rows), ("cohort", "wave"), threshold=5)
    assert list(by_cohort["n_respondents"]) == [8]


def test_morale_by_cohort_and_wave_pools_the_homes():
    rows = _home("Willow Court", [4, 4], 1) + _home("Elm House", [1, 2, 2], 20)
    table = morale_by_group(pd.DataFrame(rows), ("cohort", "wave"), 5)
    assert list(table.columns) == ["cohort", "wave", *MORALE_FIGURES]
    assert table[["n_respondents", "mean"]].values.tolist() == [[5, 2.6]]


def test_the_threshold_must_be_given():
    with pytest.raises(TypeError, match="anonymity threshold"):
        morale_by_group(pd.DataFrame([_answer(1, 3)]))


def test_waves_come_in_the_order_they_opened():
    rows = _home("Willow Court", [3] * 5, 1, "midpoint", END - dt.timedelta(days=90))
    rows += _home("Willow Court", [3] * 5, 1, "end", END)
    rows += _home("Willow Court", [3] * 5, 1, "baseline", BASELINE)
    table = morale_by_group(pd.DataFrame(rows), ("cohort", "wave"), threshold=5)
    assert list(table["wave"]) == ["baseline", "midpoint", "end"]


def test_a_person_counts_once_in_a_group():
    # Across both waves, person 1 answered twice: one respondent, their answers averaged.
    rows = _home("Willow Court", [1, 5, 5, 5, 5], 1, "baseline", BASELINE)
    rows += [_answer(1, 3, "end", END)]
    table = morale_by_group(pd.DataFrame(rows), ("home",), threshold=5)
    assert table.iloc[0]["n_respondents"] == 5
    assert table.iloc[0]["mean"] == pytest.approx((2 + 5 + 5 + 5 + 5) / 5)


PULSES = [dt.datetime(2027, month, 1, 9, tzinfo=dt.UTC) for month in range(1, 13)]
PULSES += [dt.datetime(2028, 1, 1, 9, tzinfo=dt.UTC)]
LOW, HIGH = [3, 3, 3, 4, 3], [3, 3, 4, 4, 3]  # five people: means 3.2 and 3.4


def _pulse_rows(months, cohort="c1"):
    """Monthly pulse answers: one list of people's answers per month, from January 2027."""
    rows = []
    for opens, answers in zip(PULSES, months, strict=False):
        wave = f"pulse-{opens:%Y-%m-%d}"
        for person, value in enumerate(answers):
            rows.append(_answer(person, value, wave, opens, cohort=cohort))
    return rows


def test_pulse_series_is_one_point_per_pulse_wave_in_time_order():
    months = [LOW, HIGH] * 6 + [[5] * 5]
    rows = _pulse_rows(months)
    rows += _home("Willow Court", [1] * 5, 1, "baseline", BASELINE)  # not a pulse wave
    frame = pd.DataFrame(rows).sample(frac=1, random_state=3)  # rows in any order
    series = pulse_series(frame, threshold=5)
    assert list(series.columns) == ["cohort", *PULSE_FIGURES]
    means = [3.2, 3.4] * 6 + [5.0]
    assert list(series["mean"]) == pytest.approx(means)
    assert list(series["n_respondents"]) == [5] * 13
    assert list(series["label"])[:2] == ["1 January 2027", "1 February 2027"]
    assert series["label"].iloc[-1] == "1 January 2028"
    chart = xmr(means)
    assert series["centre"].iloc[0] == pytest.approx(chart.mean)
    assert series["unpl"].iloc[0] == pytest.approx(chart.unpl)
    assert not series["trial_limits"].iloc[0]


def test_a_small_pulse_stays_as_a_gap_left_out_of_the_limits():
    months = [LOW, HIGH, LOW, [1, 1], HIGH, LOW, HIGH, LOW, HIGH, LOW]
    series = pulse_series(pd.DataFrame(_pulse_rows(months)), threshold=5)
    gap = series.iloc[3]
    assert (gap["label"], gap["n_respondents"], gap["mean"]) == (
        "1 April 2027",
        SUPPRESSED,
        SUPPRESSED,
    )
    # The two people's 1s are in no figure: the centre is the mean of the nine others.
    assert series["centre"].iloc[0] == pytest.approx((3.2 * 5 + 3.4 * 4) / 9)
    assert series["trial_limits"].all()


def test_pulse_series_marks_the_points_that_signal():
    months = [LOW, HIGH] * 3 + [[4, 5, 5, 5, 4]] + [HIGH, LOW] * 3
    series = pulse_series(pd.DataFrame(_pulse_rows(months)), threshold=5)
    assert series["mean"].iloc[6] == pytest.approx(4.6)
    assert series["signals"].iloc[6] == "beyond_limits"
    assert set(series["signals"].drop(index=6)) == {""}


def _asked(months, cohort="c1"):
    """The invitations of monthly pulse waves (what the frames give), one per month."""
    return pd.DataFrame(
        [
            {
                "cohort": cohort,
                "wave": f"pulse-{opens:%Y-%m-%d}",
                "wave_kind": "pulse",
                "wave_opens_at": opens,
                "instrument": "staff_morale",
            }
            for opens in PULSES[:months]
        ]
    )


def test_a_pulse_wave_nobody_answered_is_a_gap_not_a_missing_month():
    months = [LOW, HIGH, [], LOW]  # March asked, never answered (a failed send, say)
    series = pulse_series(pd.DataFrame(_pulse_rows(months)), 5, invitations=_asked(4))
    assert list(series["label"]) == [
        "1 January 2027",
        "1 February 2027",
        "1 March 2027",
        "1 April 2027",
    ]
    march = series.iloc[2]
    assert march["n_respondents"] == 0 and pd.isna(march["mean"])
    # The gap is left out of the limits: the centre line is that of the three answered months.
    assert series["centre"].iloc[0] == pytest.approx((3.2 + 3.4 + 3.2) / 3)
    # Without the invitations, March would silently vanish from the chart.
    assert len(pulse_series(pd.DataFrame(_pulse_rows(months)), 5)) == 3


def test_pulse_waves_asked_but_never_answered_still_make_a_series():
    nothing = pd.DataFrame(columns=ANSWER_COLUMNS)  # what answers_frame gives before any answer
    series = pulse_series(nothing, 5, invitations=_asked(2))
    assert list(series["n_respondents"]) == [0, 0]


def test_pulse_series_one_per_cohort():
    rows = _pulse_rows([LOW, HIGH, LOW]) + _pulse_rows([[2] * 5] * 3, cohort="c2")
    series = pulse_series(pd.DataFrame(rows), threshold=5)
    assert list(series["cohort"]) == ["c1"] * 3 + ["c2"] * 3
    assert list(series["centre"].drop_duplicates()) == pytest.approx([(3.2 + 3.4 + 3.2) / 3, 2.0])


def test_stored_morale_answers_read_through_the_frames(session, factory):
    from sqlalchemy import select

    from reports.frames import answers_frame
    from storage.models import Invitation
    from surveys.answers import complete_response, record_answer
    from surveys.invitations import open_wave

    willow, elm, birch = (factory.home(n) for n in ("Willow Court", "Elm House", "Birch Lodge"))
    for home, n in ((willow, 5), (elm, 2), (birch, 3)):
        for _ in range(n):
            factory.person(home, role="care_worker")
    programme, wave = factory.programme(
        [willow, elm, birch], [("staff_morale", {"roles": ["care_worker"]}, "sms")]
    )
    open_wave(session, wave, wave.opens_at)
    invitations = session.scalars(select(Invitation).order_by(Invitation.id)).all()
    for invitation, value in zip(invitations, [2, 3, 3, 4, 5, 1, 1, 2, 2, 2], strict=True):
        record_answer(session, invitation, "morale", value, "sms", wave.opens_at)
        complete_response(session, invitation, wave.opens_at)
    session.commit()

    answers = answers_frame(session, programme.key)
    by_home = morale_by_group(answers, ("home", "wave"), 5).set_index("home")
    assert by_home.loc["Willow Court", ["n_respondents", "mean"]].tolist() == [5, 3.4]
    # Elm (2) and Birch (3) are hidden together, so the cohort less Willow reveals 5 people.
    assert by_home.loc[["Elm House", "Birch Lodge"], "mean"].tolist() == [SUPPRESSED] * 2
    by_cohort = morale_by_group(answers, ("cohort", "wave"), 5)
    assert by_cohort[["n_respondents", "mean"]].values.tolist() == [[10, pytest.approx(2.5)]]
    assert pulse_series(answers, 5).empty  # a baseline wave is not a pulse
