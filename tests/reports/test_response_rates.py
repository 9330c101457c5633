"""Response rates per group: the funnel, AAPOR dispositions and rates, "All" rows, and
disclosure control of small groups."""

from __future__ import annotations

import datetime as dt
import itertools
import math

import pandas as pd
import pytest
from sqlalchemy import select

from reports.disclosure import ALL, SUPPRESSED
from reports.dispositions import DISPOSITION_CODES
from reports.frames import invitations_frame
from reports.response_rates import (
    FUNNEL_COLUMNS,
    RESPONSE_RATE_COLUMNS,
    funnel,
    response_rates,
)
from storage.models import Invitation
from surveys.answers import complete_response, record_answer
from surveys.invitations import open_wave, set_status

UTC = dt.UTC
STAGES = ["sent", "delivered", "started", "completed"]
# Outcome -> (status, furthest stage reached, items answered of 10)
OUTCOMES = {
    "complete": ("completed", "completed", 10),
    "partial": ("expired", "started", 6),
    "breakoff": ("expired", "started", 1),
    "opted_out": ("opted_out", None, 0),
    "ignored": ("expired", "delivered", 0),
    "failed": ("failed", "sent", 0),
    "no_receipt": ("expired", "sent", 0),
    "unsent": ("expired", None, 0),
}
_ids = itertools.count(1)


def invitations(spec, wave="baseline", instrument="staff_morale"):
    """Invitations from {home: [outcome, ...]}, one new person per invitation."""
    rows = []
    for home, outcomes in spec.items():
        for outcome in outcomes:
            n = next(_ids)
            rows.append(_row(n, n, home, outcome, wave=wave, instrument=instrument))
    return pd.DataFrame(rows)


def _row(invitation_id, person_id, home, outcome, **extra):
    status, furthest, answered = OUTCOMES[outcome]
    reached = STAGES[: STAGES.index(furthest) + 1] if furthest else []
    row = {
        "invitation_id": invitation_id,
        "cohort": "c1",
        "wave": "baseline",
        "wave_opens_at": dt.datetime(2027, 1, 4, 9, tzinfo=UTC),
        "wave_closes_at": dt.datetime(2027, 1, 18, 17, tzinfo=UTC),
        "instrument": "staff_morale",
        "home": home,
        "role": "care_worker",
        "channel": "sms",
        "status": status,
        "person_id": person_id,
        "active_from": dt.date(2020, 1, 1),
        "active_to": None,
        "responded": answered > 0,
        "items_answered": answered,
        "items_total": 10,
        **{f"reached_{stage}": stage in reached for stage in STAGES},
    }
    row.update(extra)
    return row


def rows_by(table, column):
    return {row[column]: row for row in table.to_dict("records")}


def test_funnel_dispositions_and_rates_per_home_and_for_all_homes():
    spec = {
        "Ash House": ["complete"] * 3 + ["partial", "ignored", "failed"],
        "Birch Lodge": ["complete", "breakoff", "opted_out", "no_receipt", "unsent"],
    }
    table = response_rates(invitations(spec), ["wave", "home"], threshold=5)
    assert list(table.columns) == ["wave", "home", *RESPONSE_RATE_COLUMNS]
    assert list(table["home"]) == ["Ash House", "Birch Lodge", ALL]
    homes = rows_by(table, "home")
    ash = homes["Ash House"]
    assert [ash[c] for c in ("invited", "people", *STAGES)] == [6, 6, 6, 5, 4, 3]
    assert [ash[c] for c in DISPOSITION_CODES] == [3, 1, 0, 2, 0, 0, 0, 0]
    assert ash["eligible"] == 6
    assert ash["RR1"] == pytest.approx(3 / 6) and ash["RR2"] == pytest.approx(4 / 6)
    assert ash["COOP1"] == pytest.approx(3 / 4) and ash["CON1"] == pytest.approx(4 / 6)
    assert ash["response_rate"] == pytest.approx(3 / 6)
    everyone = homes[ALL]
    assert [everyone[c] for c in DISPOSITION_CODES] == [4, 1, 2, 2, 0, 1, 1, 0]
    assert everyone["eligible"] == 9
    assert everyone["RR1"] == pytest.approx(4 / 11)
    assert everyone["COOP1"] == pytest.approx(4 / 7)  # I / (I + P + R + O)
    assert everyone["CON1"] == pytest.approx(7 / 11)


def test_a_small_home_cannot_be_recovered_from_the_all_row():
    spec = {
        "Ash House": ["complete"] * 6,
        "Birch Lodge": ["complete"] * 4 + ["ignored"] * 3,
        "Cedar Court": ["ignored"] * 3,  # 3 people: under the threshold
    }
    table = response_rates(invitations(spec), ["wave", "home"], threshold=5)
    homes = rows_by(table, "home")
    assert all(homes["Cedar Court"][c] == SUPPRESSED for c in RESPONSE_RATE_COLUMNS)
    # All minus the homes shown would be Cedar Court alone, so the next smallest home
    # is suppressed too: the subtraction now gives two homes, 9 people, together.
    assert homes["Ash House"]["completed"] == SUPPRESSED
    assert homes["Birch Lodge"]["completed"] == 4
    assert homes[ALL]["completed"] == 10 and homes[ALL]["people"] == 16
    shown = table[(table["home"] != ALL) & (table["people"] != SUPPRESSED)]
    assert homes[ALL]["people"] - shown["people"].sum() >= 5


def test_the_all_row_is_suppressed_only_when_it_is_small_itself():
    table = response_rates(invitations({"Ash House": ["complete"] * 4}), ["home"], 5)
    assert (table["invited"] == SUPPRESSED).all() and list(table["home"]) == ["Ash House", ALL]


def test_people_who_appear_in_several_rows_are_counted_once_between_them():
    # The same three managers answer two instruments: the suppressed rows hold 3 people,
    # not 6, so the staff instrument must be suppressed too or All minus it gives them.
    managers = [
        _row(i, person, "Ash House", "complete", instrument=instrument, role="manager")
        for i, (person, instrument) in enumerate(
            itertools.product([1, 2, 3], ["manager_self_report", "appraisal_360"])
        )
    ]
    staff = [_row(100 + p, 100 + p, "Ash House", "complete") for p in range(10)]
    frame = pd.DataFrame(managers + staff)
    summed = response_rates(frame, ["wave", "instrument"], 5, totals=True)
    table = rows_by(summed, "instrument")
    assert table["manager_self_report"]["invited"] == SUPPRESSED
    assert table["appraisal_360"]["invited"] == SUPPRESSED
    assert table["staff_morale"]["invited"] == SUPPRESSED
    assert (table[ALL]["invited"], table[ALL]["people"]) == (16, 13)


def test_people_not_invitations_decide_suppression():
    one_person = [_row(i, 7, "Ash House", "complete", instrument=f"i{i}") for i in range(6)]
    table = response_rates(pd.DataFrame(one_person), ["home"], threshold=5)
    assert (table["invited"] == SUPPRESSED).all()


def test_a_group_of_exactly_the_threshold_is_shown_and_zero_is_shown():
    spec = {"Ash House": ["ignored"] * 5}
    row = rows_by(response_rates(invitations(spec), ["wave", "home"], 5), "home")["Ash House"]
    assert row["people"] == 5
    assert row["completed"] == 0 and row["I"] == 0 and row["RR1"] == 0


def test_rates_with_no_eligible_cases_are_nan_not_an_error():
    left = [_row(i, i, "Ash House", "unsent", active_to=dt.date(2026, 12, 1)) for i in range(5)]
    row = response_rates(pd.DataFrame(left), ["home"], 5).iloc[0]
    assert row["NE"] == 5 and row["eligible"] == 0
    assert all(math.isnan(row[rate]) for rate in ("RR1", "RR2", "COOP1", "CON1"))


def test_groups_can_be_any_columns_and_the_table_can_be_empty():
    frame = invitations({"Ash House": ["complete"] * 5, "Birch Lodge": ["ignored"] * 5})
    by_channel = response_rates(frame, ["cohort", "channel", "role"], 5, totals=False)
    assert list(by_channel.columns[:3]) == ["cohort", "channel", "role"]
    assert by_channel.iloc[0]["invited"] == 10
    empty = response_rates(frame.iloc[0:0], ["wave", "home"], 5)
    assert empty.empty and list(empty.columns) == ["wave", "home", *RESPONSE_RATE_COLUMNS]


def test_an_answered_email_counts_as_delivered_in_the_funnel():
    # SMTP gives no delivery report: the answer is the evidence that it arrived.
    emails = [
        _row(i, i, "Ash House", "complete", channel="email", reached_delivered=False)
        for i in range(5)
    ]
    row = response_rates(pd.DataFrame(emails), ["channel"], 5).iloc[0]
    assert (row["sent"], row["delivered"], row["completed"]) == (5, 5, 5)


def test_funnel_in_long_form_for_charts():
    spec = {
        "Ash House": ["complete"] * 3 + ["ignored", "unsent"],
        "Birch Lodge": ["complete"],
        "Cedar Court": ["complete"] * 4,  # with Birch Lodge: 5 people suppressed together
    }
    long = funnel(invitations(spec), ["wave", "home"], threshold=5)
    assert list(long.columns) == ["wave", "home", *FUNNEL_COLUMNS]
    ash = long[long["home"] == "Ash House"]
    assert list(ash["stage"]) == ["invited", *STAGES]
    assert list(ash["count"]) == [5, 4, 4, 3, 3]
    assert list(ash["share"]) == pytest.approx([1.0, 0.8, 0.8, 0.6, 0.6])
    birch = long[long["home"] == "Birch Lodge"]
    assert set(birch["count"]) == {SUPPRESSED} and set(birch["share"]) == {SUPPRESSED}


def _staff(home, role, n):
    return [_row(next(_ids), None, home, "complete", role=role) for _ in range(n)]


def _what_subtraction_reveals(cells, total):
    """(rows hidden, people in them) when a published total minus the rows shown is taken."""
    hidden = cells[cells["people"] == SUPPRESSED]
    shown = cells[cells["people"] != SUPPRESSED]
    return len(hidden), total["people"] - shown["people"].sum()


def test_a_home_by_role_table_cannot_be_differenced_against_the_by_role_table():
    rows = _staff("Ash", "care_worker", 8) + _staff("Ash", "nurse", 2)
    rows += _staff("Ash", "senior_care_worker", 6) + _staff("Birch", "care_worker", 10)
    rows += _staff("Birch", "nurse", 6) + _staff("Birch", "senior_care_worker", 7)
    frame = pd.DataFrame(rows).assign(person_id=lambda f: f["invitation_id"])
    detail = response_rates(frame, ["wave", "home", "role"], 5)
    by_role = rows_by(response_rates(frame, ["wave", "role"], 5), "role")
    by_home = rows_by(response_rates(frame, ["wave", "home"], 5), "home")
    cells = detail[detail["role"] != ALL]
    # The two nurses at Ash: Birch's nurses are hidden too, or the nurses' total minus
    # Birch's would be Ash's two nurses.
    hidden = cells[cells["people"] == SUPPRESSED]
    assert ("Ash", "nurse") in set(zip(hidden["home"], hidden["role"], strict=True))
    for role, total in by_role.items():  # every home's row of a role, against its total
        if role != ALL:
            n_hidden, people = _what_subtraction_reveals(cells[cells["role"] == role], total)
            assert n_hidden == 0 or (n_hidden >= 2 and people >= 5), role
    for home, total in by_home.items():  # every role's row of a home, against its total
        if home != ALL:
            n_hidden, people = _what_subtraction_reveals(cells[cells["home"] == home], total)
            assert n_hidden == 0 or (n_hidden >= 2 and people >= 5), home


def test_response_rates_of_stored_invitations(session, factory):
    sizes = {"Ash House": 6, "Birch Lodge": 7, "Cedar Court": 2}
    homes = {name: factory.home(name) for name in sizes}
    people = {name: [factory.person(homes[name]) for _ in range(n)] for name, n in sizes.items()}
    programme, wave = factory.programme(
        list(homes.values()), [("staff_morale", {"roles": ["care_worker"]}, "sms")]
    )
    open_wave(session, wave, wave.opens_at)
    at = wave.opens_at + dt.timedelta(hours=2)
    birch = [
        session.scalars(select(Invitation).where(Invitation.person_id == p.id)).one()
        for p in people["Birch Lodge"]
    ]
    for invitation in birch[:5]:
        set_status(invitation, "sent", at)
        set_status(invitation, "delivered", at)
    for invitation in birch[:3]:
        record_answer(session, invitation, "morale", 4, "sms", at)
        complete_response(session, invitation, at)
    set_status(birch[5], "failed", at)
    session.commit()

    table = response_rates(invitations_frame(session, programme.key), ["wave", "home"], 5)

    rows = rows_by(table, "home")
    assert rows["Cedar Court"]["invited"] == SUPPRESSED  # 2 people
    assert rows["Ash House"]["invited"] == SUPPRESSED  # or All minus the rest gives Cedar
    got = rows["Birch Lodge"]
    assert [got[c] for c in ("invited", "sent", "delivered", "completed")] == [7, 5, 5, 3]
    assert [got[c] for c in ("I", "NC", "UH")] == [3, 3, 1]
    assert got["RR1"] == pytest.approx(3 / 7) and got["COOP1"] == 1
    assert (rows[ALL]["people"], rows[ALL]["I"], rows[ALL]["UH"]) == (15, 3, 9)


def test_instruments_are_never_added_up_so_a_small_one_hides_only_itself():
    staff = invitations({"Ash House": ["complete"] * 12 + ["ignored"] * 8})
    managers = invitations({"Ash House": ["complete"] * 3}, instrument="manager_self_report")
    frame = pd.concat([staff, managers], ignore_index=True)
    by_instrument = rows_by(
        response_rates(frame, ["wave", "instrument"], 5, totals=False), "instrument"
    )
    assert set(by_instrument) == {"staff_morale", "manager_self_report"}  # no "All" row
    assert by_instrument["manager_self_report"]["invited"] == SUPPRESSED
    assert (by_instrument["staff_morale"]["invited"], by_instrument["staff_morale"]["RR1"]) == (
        20,
        pytest.approx(0.6),
    )
    # Broken down by home, each instrument is its own line: the managers' rows do not
    # drag the staff's down with them either.
    by_home = response_rates(frame, ["wave", "instrument", "home"], 5)
    staff_rows = by_home[by_home["instrument"] == "staff_morale"]
    assert SUPPRESSED not in set(staff_rows["invited"])
    assert ALL not in set(by_home["instrument"])
