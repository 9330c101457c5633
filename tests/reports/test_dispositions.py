"""AAPOR dispositions of invitations and the AAPOR outcome rates."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import pytest
from sqlalchemy import select

from reports.dispositions import aapor_rates, dispositions
from reports.frames import invitations_frame, items_frame
from storage.models import Invitation
from surveys.answers import complete_response, record_answer
from surveys.invitations import open_wave, set_status
from surveys.opt_outs import opt_out

UTC = dt.UTC
OPENS = dt.datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
CLOSES = dt.datetime(2027, 1, 18, 17, 0, tzinfo=UTC)
STAGES = ["sent", "delivered", "started", "completed"]


def case(status="pending", reached=(), answered=0, total=10, **extra):
    """One invitation as `invitations_frame` gives it; `reached` lists the stages seen."""
    row = {
        "invitation_id": 1,
        "wave": "baseline",
        "wave_opens_at": OPENS,
        "wave_closes_at": CLOSES,
        "instrument": "manager_self_report",
        "home": "Rose Court",
        "role": "manager",
        "channel": "email",
        "status": status,
        "person_id": 1,
        "active_from": dt.date(2020, 1, 1),
        "active_to": None,
        "responded": answered > 0 or status in ("started", "completed"),
        "items_answered": answered,
        "items_total": total,
        **{f"reached_{stage}": stage in reached for stage in STAGES},
    }
    row.update(extra)
    return row


def code_of(row, **options):
    """The (disposition, reason) of one invitation."""
    result = dispositions(pd.DataFrame([row]), **options).iloc[0]
    return result["disposition"], result["disposition_reason"]


ANSWERED = ("sent", "started", "completed")


@pytest.mark.parametrize(
    ("row", "code", "reason"),
    [
        (case("completed", ANSWERED, 10), "I", "answered at least 80% of items"),
        (case("completed", ANSWERED, 8), "I", "answered at least 80% of items"),
        (case("expired", ("sent", "started"), 7), "P", "answered 50%-80% of items"),
        (case("started", ("sent", "started"), 5), "P", "answered 50%-80% of items"),
        # submitted with most items skipped: a break-off, not a complete
        (case("completed", ANSWERED, 4), "R", "broke off"),
        (case("started", ("sent", "started"), 0), "R", "broke off"),
        (case("opted_out"), "R", "opted out"),
        (case("opted_out", ("sent", "started"), 6), "P", "answered 50%-80% of items"),
        (case("expired", ("sent", "delivered"), channel="sms"), "NC", "delivered, not answered"),
        (case("failed", ("sent",), channel="sms"), "NC", "undeliverable"),
        (case("expired", ("sent",), channel="sms"), "UO", "sent, no delivery evidence"),
        (case("sent", ("sent",)), "UO", "sent, no delivery evidence"),
        (case("pending"), "UH", "never sent"),
        (case("expired"), "UH", "never sent"),
    ],
)
def test_each_outcome_gets_its_aapor_code(row, code, reason):
    assert code_of(row) == (code, reason)


def test_the_roster_decides_eligibility_on_the_days_the_wave_opened_and_closed():
    left_on_opening_day = case("sent", ("sent",), active_to=dt.date(2027, 1, 4))
    left_the_next_day = case("sent", ("sent",), active_to=dt.date(2027, 1, 5))
    left_but_answered = case("completed", ANSWERED, 10, active_to=dt.date(2027, 1, 5))
    joined_after_closing = case("pending", active_from=dt.date(2027, 1, 19))
    joined_on_closing_day = case("pending", active_from=dt.date(2027, 1, 18))
    assert code_of(left_on_opening_day) == ("NE", "left before the wave opened")
    assert code_of(left_the_next_day) == ("NC", "left during the wave")
    assert code_of(left_but_answered)[0] == "I"
    assert code_of(joined_after_closing) == ("NE", "joined after the wave closed")
    assert code_of(joined_on_closing_day) == ("UH", "never sent")


def test_the_opening_day_is_the_programmes_local_day():
    # 23:30 UTC on 30 June is 00:30 on 1 July in London (BST): someone whose last day
    # was 30 June had left before the wave opened there, but not by the UTC calendar.
    row = case(
        "sent",
        ("sent",),
        wave_opens_at=dt.datetime(2027, 6, 30, 23, 30, tzinfo=UTC),
        wave_closes_at=dt.datetime(2027, 7, 14, 17, 0, tzinfo=UTC),
        active_to=dt.date(2027, 7, 1),
    )
    assert code_of(row)[0] == "NE"
    assert code_of(row, timezone="UTC") == ("NC", "left during the wave")


def test_the_complete_and_partial_shares_can_be_set():
    row = case("completed", ANSWERED, 8)
    assert code_of(row, complete_share=1.0) == ("P", "answered 50%-100% of items")
    assert code_of(case("started", ("sent", "started"), 3), partial_share=0.3)[0] == "P"
    with pytest.raises(ValueError, match="partial_share <= complete_share"):
        dispositions(pd.DataFrame([row]), complete_share=0.5, partial_share=0.8)


def test_aapor_rates_match_the_standard_definitions_by_hand():
    counts = {"I": 4, "P": 2, "R": 1, "NC": 1, "O": 1, "UH": 1, "UO": 1, "NE": 1}
    rates = aapor_rates(counts)
    assert round(rates["RR1"], 3) == 0.364  # 4 / 11
    assert round(rates["RR2"], 3) == 0.545  # 6 / 11
    assert rates["COOP1"] == pytest.approx(4 / 8)  # I / (I + P + R + O)
    assert rates["CON1"] == pytest.approx(8 / 11)  # (I + P + R + O) / all but NE


def test_aapor_rates_with_nothing_to_rate_are_nan():
    assert all(math.isnan(v) for v in aapor_rates({}).values())
    assert all(math.isnan(v) for v in aapor_rates({"NE": 3}).values())
    never_reached = aapor_rates({"NC": 2, "UO": 1})
    assert never_reached["RR1"] == 0 and never_reached["CON1"] == 0
    assert math.isnan(never_reached["COOP1"])  # nobody contacted: no cooperation to rate


def _managers_invited(session, factory, n):
    home = factory.home("Rose Court")
    managers = [factory.person(home, role="manager") for _ in range(n)]
    programme, wave = factory.programme(
        [home], [("manager_self_report", {"roles": ["manager"]}, "email")], opens=OPENS
    )
    open_wave(session, wave, wave.opens_at)
    invitations = [
        session.scalars(select(Invitation).where(Invitation.person_id == m.id)).one()
        for m in managers
    ]
    return programme, managers, invitations


def _answer(session, invitation, items, n, at):
    for item in items[:n]:
        record_answer(session, invitation, item.item_id, int(item.scale_min), "web", at)


def test_dispositions_of_stored_invitations(session, factory):
    programme, managers, invitations = _managers_invited(session, factory, 10)
    items = list(items_frame(session, programme.key).itertuples())
    at = OPENS + dt.timedelta(hours=1)
    for invitation in invitations[:8]:
        set_status(invitation, "sent", at)
    _answer(session, invitations[0], items, len(items), at)
    complete_response(session, invitations[0], at)
    _answer(session, invitations[1], items, math.ceil(len(items) * 0.6), at)
    _answer(session, invitations[2], items, 1, at)
    opt_out(session, "email", managers[3].email, "unsubscribe", managers[3], at)
    set_status(invitations[5], "delivered", at)
    set_status(invitations[6], "failed", at)
    managers[8].active_to = OPENS.date()  # a roster correction: left before the wave
    managers[9].active_to = OPENS.date() + dt.timedelta(days=3)
    session.commit()

    frame = dispositions(invitations_frame(session, programme.key))

    codes = dict(zip(frame["person_id"], frame["disposition"], strict=True))
    assert [codes[m.id] for m in managers] == [
        "I",
        "P",
        "R",
        "R",
        "UO",  # email accepted by SMTP, never answered: no evidence it arrived
        "NC",
        "NC",
        "UO",
        "NE",
        "NC",  # left during the wave
    ]
