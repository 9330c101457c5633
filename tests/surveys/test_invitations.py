"""Opening a wave: who is invited, about whom, by which channel; answers and statuses."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from storage.models import Answer, Invitation, OptOut
from surveys.answers import AnswerError, complete_response, record_answer
from surveys.invitations import expire_wave, open_wave, set_status

STAFF = ["deputy_manager", "nurse", "senior_care_worker", "care_worker"]
AT = dt.datetime(2027, 1, 4, 9, 30, tzinfo=dt.UTC)


def _invitations(session, wave):
    return session.scalars(select(Invitation).where(Invitation.wave_id == wave.id)).all()


def test_morale_invites_active_staff_by_sms_and_is_idempotent(session, factory):
    home, elsewhere = factory.home(), factory.home()
    workers = [factory.person(home) for _ in range(3)]
    factory.person(home, role="manager")
    factory.person(elsewhere)  # not in the cohort
    factory.person(home, active_to=dt.date(2026, 12, 1))  # left before the wave
    factory.person(home, active_from=dt.date(2027, 2, 1))  # starts after it opened
    _, wave = factory.programme([home], [("staff_morale", {"roles": STAFF}, "sms")])
    report = open_wave(session, wave, AT)
    session.commit()
    invited = _invitations(session, wave)
    assert report.created == 3
    assert sorted(i.person_id for i in invited) == sorted(w.id for w in workers)
    assert {i.channel for i in invited} == {"sms"}
    assert all(i.status == "pending" and len(i.token) >= 32 for i in invited)
    assert len({i.token for i in invited}) == 3
    again = open_wave(session, wave, AT)
    assert again.created == 0 and again.existing == 3
    assert len(_invitations(session, wave)) == 3
    assert wave.opened_at == AT


def test_360_invites_self_staff_and_line_manager_of_the_same_home(session, factory):
    home, other = factory.home(), factory.home()
    manager = factory.person(home, role="manager")
    other_manager = factory.person(other, role="manager")
    staff = [factory.person(home), factory.person(home, role="nurse")]
    owner = factory.person(home, role="proprietor")
    factory.person(other)
    audience = {
        "subject_role": "manager",
        "raters": {"self": ["manager"], "staff": STAFF, "line_manager": ["proprietor"]},
    }
    _, wave = factory.programme([home, other], [("appraisal_360", audience, None)])
    open_wave(session, wave, AT)
    about_manager = [i for i in _invitations(session, wave) if i.subject_person_id == manager.id]
    relations = sorted((i.person_id, i.rater_relation, i.channel) for i in about_manager)
    assert relations == sorted(
        [(manager.id, "self", "email"), (owner.id, "line_manager", "email")]
        + [(s.id, "staff", "sms") for s in staff]
    )
    about_other = [
        i for i in _invitations(session, wave) if i.subject_person_id == other_manager.id
    ]
    assert len(about_other) == 2  # self and the one care worker of that home


def test_opted_out_number_falls_back_to_email_or_is_left_out(session, factory):
    home = factory.home()
    with_email = factory.person(home)
    without_email = factory.person(home, email=None)
    session.add_all(
        [
            OptOut(channel="sms", address=with_email.mobile, keyword="STOP"),
            OptOut(channel="sms", address=without_email.mobile, keyword="STOP"),
        ]
    )
    _, wave = factory.programme([home], [("staff_morale", {"roles": STAFF}, "sms")])
    report = open_wave(session, wave, AT)
    invited = _invitations(session, wave)
    assert [(i.person_id, i.channel) for i in invited] == [(with_email.id, "email")]
    assert report.unreachable == [without_email.full_name]


def test_answers_are_checked_stored_once_and_complete_the_invitation(session, factory):
    home = factory.home()
    factory.person(home)
    _, wave = factory.programme([home], [("staff_morale", {"roles": STAFF}, "sms")])
    open_wave(session, wave, AT)
    invitation = _invitations(session, wave)[0]
    with pytest.raises(AnswerError, match="outside the scale 1-5"):
        record_answer(session, invitation, "morale", 9, "sms")
    with pytest.raises(AnswerError, match="no item 'happiness'"):
        record_answer(session, invitation, "happiness", 3, "sms")
    record_answer(session, invitation, "morale", 2, "sms", AT)
    record_answer(session, invitation, "morale", 4, "sms", AT)  # changed their mind
    complete_response(session, invitation, AT)
    session.commit()
    answers = session.scalars(select(Answer)).all()
    assert [(a.item_id, a.value) for a in answers] == [("morale", 4)]
    assert invitation.status == "completed"
    assert [e.status for e in invitation.events] == ["pending", "started", "completed"]


def test_status_never_moves_backwards_and_closed_waves_expire(session, factory):
    home = factory.home()
    factory.person(home)
    factory.person(home)
    _, wave = factory.programme([home], [("staff_morale", {"roles": STAFF}, "sms")])
    open_wave(session, wave, AT)
    first, second = _invitations(session, wave)
    assert set_status(first, "delivered", AT)
    assert not set_status(first, "sent", AT)  # a late 'sent' callback
    assert first.status == "delivered"
    complete_response(session, second, AT)
    assert expire_wave(session, wave, wave.closes_at) == 1
    assert (first.status, second.status) == ("expired", "completed")
    with pytest.raises(AnswerError, match="expired"):
        record_answer(session, first, "morale", 3, "sms")
