"""The report frames read from the database, and the fingerprint that decides whether a
cached report may be reused."""

from __future__ import annotations

import pandas as pd
from sqlalchemy import select

from reports.frames import FUNNEL_STAGES, answers_frame, data_version, invitations_frame
from reports.service import ReportRequest, build_report
from storage.audit import record
from storage.models import Answer, Invitation, InvitationEvent, Response
from surveys.invitations import open_wave


def test_the_fingerprint_changes_exactly_when_a_report_could(session, factory):
    home = factory.home("Willow Court")
    factory.person(home)
    programme, wave = factory.programme(
        [home], [("staff_morale", {"roles": ["care_worker"]}, "sms")]
    )
    before = data_version(session, programme.key)
    assert data_version(session, programme.key) == before  # nothing changed
    open_wave(session, wave, wave.opens_at)  # invitations and their status events
    session.flush()
    opened = data_version(session, programme.key)
    assert opened != before
    record(session, "report_view", actor="eval@example.org")  # reading changes nothing
    session.flush()
    assert data_version(session, programme.key) == opened
    record(session, "retention_purge", actor="system")  # an erasure or purge writes one
    session.flush()
    assert data_version(session, programme.key) != opened


def test_the_frames_carry_each_invitations_furthest_stage_and_its_answers(session, factory):
    """Funnel flags and answer counts are aggregated in SQL; the frames must still say,
    per invitation, every stage it ever reached and how many items have a value."""
    home = factory.home("Willow Court")
    answering, silent = factory.person(home), factory.person(home)
    programme, wave = factory.programme(
        [home], [("manager_self_report", {"roles": ["care_worker"]}, "email")]
    )
    open_wave(session, wave, wave.opens_at)
    session.flush()
    by_person = {i.person_id: i for i in session.scalars(select(Invitation))}
    invitation = by_person[answering.id]
    for status in ("sent", "delivered", "started", "expired"):  # reached, then lapsed
        session.add(InvitationEvent(invitation=invitation, status=status))
    invitation.status = "expired"
    response = Response(invitation=invitation, channel="email")
    # Two items with a value and one skipped (stored as NULL).
    response.answers = [
        Answer(item_id=item, value=value, channel="email")
        for item, value in (("stress", 4), ("enthusiasm", 2), ("feeling_valued", None))
    ]
    session.add(response)
    session.flush()

    frame = invitations_frame(session, programme.key).set_index("person_id")
    mine, theirs = frame.loc[answering.id], frame.loc[silent.id]
    assert [bool(mine[f"reached_{s}"]) for s in FUNNEL_STAGES] == [True, True, True, False]
    assert (bool(mine["responded"]), mine["items_answered"], mine["items_total"]) == (True, 2, 15)
    assert [bool(theirs[f"reached_{s}"]) for s in FUNNEL_STAGES] == [False] * 4
    assert (bool(theirs["responded"]), theirs["items_answered"]) == (False, 0)
    assert (mine["status"], mine["home"], mine["wave"]) == ("expired", "Willow Court", "baseline")

    answers = answers_frame(session, programme.key)
    pairs = zip(answers["item_id"], answers["value"], strict=True)
    assert sorted(pairs) == [("enthusiasm", 2), ("stress", 4)]
    # Low-cardinality text arrives as categoricals (fast to group), the same on every
    # database; the report's tables still show plain text.
    assert isinstance(answers["item_id"].dtype, pd.CategoricalDtype)
    assert isinstance(frame["status"].dtype, pd.CategoricalDtype)
    assert not isinstance(answers["relation"].dtype, pd.CategoricalDtype)  # filled with "-"


def test_report_tables_hold_plain_text_not_categoricals(session, factory):
    home = factory.home("Willow Court")
    for _ in range(6):
        factory.person(home)
    programme, wave = factory.programme(
        [home], [("staff_morale", {"roles": ["care_worker"]}, "sms")]
    )
    open_wave(session, wave, wave.opens_at)
    session.flush()
    report = build_report(session, ReportRequest(programme.key))
    for name, table in report.tables.items():
        kinds = [c for c in table.columns if isinstance(table[c].dtype, pd.CategoricalDtype)]
        assert kinds == [], name
    assert set(report.tables["response_rates_by_home"]["home"]) >= {"Willow Court"}
