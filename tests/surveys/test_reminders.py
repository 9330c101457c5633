"""Reminders: when each is due, who still wants one, and what it says on each channel."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from bot.clock import tick
from bot.outbound import Outbound
from bot.transports import DevMailbox, DevPhone
from storage.models import Invitation, OutboxItem
from surveys.answers import complete_response, record_answer
from surveys.invitations import open_wave, set_status
from surveys.reminders import ReminderRule, due_reminders, reminder_due
from surveys.schedule import SendWindow
from surveys.sms import segments
from surveys.sms_inbox import InboundSms, handle_inbound
from surveys.wording import reminder_email, reminder_sms

UTC = dt.UTC
LONDON = ZoneInfo("Europe/London")
WINDOW = SendWindow.of({}, "Europe/London")
RULE = ReminderRule.of({"after_days": [2, 5], "max": 2})
SENT = dt.datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
CLOSES = SENT + dt.timedelta(days=14)
LINK = "https://surveys.example.org/s/" + "x" * 32


# --------------------------------------------------------------------------- pure rules


def test_the_rule_reads_the_wave_setting():
    assert (RULE.after_days, RULE.max) == ((2.0, 5.0), 2)
    assert ReminderRule.of({"after_days": [2, 5], "max": 1}).max == 1
    assert ReminderRule.of({"after_days": [3]}).max == 1  # max defaults to every day given
    assert ReminderRule.of({"after_days": [2], "max": 5}).max == 1  # no more than listed
    assert ReminderRule.of({}).max == ReminderRule.of(None).max == 0


def test_days_are_local_calendar_days_across_the_clock_changes():
    spring = dt.datetime(2026, 3, 27, 9, 0, tzinfo=UTC)  # Friday 09:00 GMT
    assert RULE.due_times(spring, LONDON) == [
        (1, dt.datetime(2026, 3, 29, 8, 0, tzinfo=UTC)),  # Sunday 09:00 BST
        (2, dt.datetime(2026, 4, 1, 8, 0, tzinfo=UTC)),
    ]
    autumn = dt.datetime(2026, 10, 23, 8, 0, tzinfo=UTC)  # Friday 09:00 BST
    assert RULE.due_times(autumn, LONDON)[0] == (1, dt.datetime(2026, 10, 25, 9, 0, tzinfo=UTC))


def test_a_reminder_is_due_on_its_day_and_only_while_wanted():
    day2 = SENT + dt.timedelta(days=2)
    assert reminder_due(RULE, SENT, "sent", day2 - dt.timedelta(seconds=1), CLOSES, WINDOW) is None
    for status in ("sent", "delivered", "started"):
        assert reminder_due(RULE, SENT, status, day2, CLOSES, WINDOW) == (1, day2)
    for status in ("pending", "completed", "opted_out", "failed", "expired"):
        assert reminder_due(RULE, SENT, status, day2, CLOSES, WINDOW) is None


def test_when_two_are_due_at_once_only_the_later_is_queued():
    late = SENT + dt.timedelta(days=6)  # the clock was down on day 2 and day 5
    assert reminder_due(RULE, SENT, "sent", late, CLOSES, WINDOW) == (
        2,
        SENT + dt.timedelta(days=5),
    )


def test_a_reminder_due_at_night_waits_for_the_morning():
    evening = dt.datetime(2027, 1, 4, 19, 30, tzinfo=UTC)
    rule = ReminderRule.of({"after_days": [0.5]})  # due 07:30 the next day
    at_three = dt.datetime(2027, 1, 5, 7, 45, tzinfo=UTC)
    assert reminder_due(rule, evening, "delivered", at_three, CLOSES, WINDOW) == (
        1,
        dt.datetime(2027, 1, 5, 9, 0, tzinfo=UTC),
    )


def test_no_reminder_that_could_only_go_out_after_the_close():
    closes = SENT + dt.timedelta(days=2, minutes=-1)
    assert reminder_due(RULE, SENT, "sent", SENT + dt.timedelta(days=2), closes, WINDOW) is None


# --------------------------------------------------------------------------- wording


@pytest.mark.parametrize(
    ("name", "home", "subject"),
    [
        ("Amara", "Willow Court", None),
        ("Siân", "Elmfield House", "Margaret"),
        ("Bartholomew-Alexander", "The Royal Borough of Kensington Residential Home", "Jo"),
    ],
)
def test_the_sms_reminder_is_one_gsm_segment_with_the_link_and_stop(name, home, subject):
    closes = dt.datetime(2027, 1, 22, 20, 0, tzinfo=LONDON)
    text = reminder_sms(name, home, LINK, closes=closes, subject=subject)
    assert segments(text) == 1
    assert LINK in text and text.endswith("STOP to opt out")
    assert "reminder" in text.lower()


def test_the_reminder_email_escapes_every_value_and_says_where_they_stopped():
    closes = dt.datetime(2027, 1, 22, 20, 0, tzinfo=LONDON)
    fresh = reminder_email(
        given_name="<b>Ann</b>",
        programme="A & B programme",
        instrument_title="Self-report",
        subject_name=None,
        closes=closes,
        link=LINK + "?a=1&b=2",
        instrument_key="manager_self_report",
        unsubscribe="https://surveys.example.org/u/tok",
    )
    assert fresh.subject == "Reminder: A & B programme: Self-report (closes Friday 22 January 2027)"
    assert "still waiting for you" in fresh.body and LINK in fresh.body
    assert "<b>Ann</b>" not in fresh.html and "&lt;b&gt;Ann&lt;/b&gt;" in fresh.html
    assert "A &amp; B programme" in fresh.html and "a=1&amp;b=2" in fresh.html
    assert "unsubscribe" in fresh.body and "Start the survey" in fresh.html
    started = reminder_email(
        given_name="Ann",
        programme="P",
        instrument_title="Self-report",
        subject_name=None,
        closes=closes,
        link=LINK,
        instrument_key="manager_self_report",
        started=True,
    )
    assert "back to where you stopped" in started.body
    assert "Continue the survey" in started.html


# --------------------------------------------------------------------------- sending


@pytest.fixture
def outbound(app):
    return Outbound(app.config["CAREPULSE"], DevPhone(), DevMailbox())


def _invite(session, factory, ask, role="care_worker", **person):
    home = factory.home()
    someone = factory.person(home, role=role, **person)
    _, wave = factory.programme([home], [ask], opens=SENT, closes=CLOSES)
    wave.reminders = {"after_days": [2, 5], "max": 2}
    open_wave(session, wave, SENT)
    invitation = session.scalars(select(Invitation).where(Invitation.wave_id == wave.id)).one()
    return invitation, someone


MORALE = ("staff_morale", {"roles": ["care_worker"]}, "sms")
SELF_REPORT = ("manager_self_report", {"roles": ["manager"]}, "email")


def test_an_sms_conversation_not_started_gets_its_opening_again(session, factory, outbound):
    invitation, _ = _invite(session, factory, MORALE)
    first = outbound.send_invitation(session, invitation, SENT)
    again = outbound.send_reminder(session, invitation, 1, SENT + dt.timedelta(days=2))
    assert again is not None and again.body == first.body
    assert again.invitation_id == invitation.id and again.channel == "sms"


def test_a_half_finished_conversation_is_asked_its_pending_question(session, factory, outbound):
    ask = ("manager_self_report", {"roles": ["care_worker"]}, "sms")
    invitation, person = _invite(session, factory, ask)
    invitation.wave.instruments[0].sms_mode = "conversation"  # 15 questions, by text
    outbound.send_invitation(session, invitation, SENT)
    handle_inbound(session, InboundSms(person.mobile, "+1", "4", None), SENT)
    assert invitation.status == "started" and invitation.sms_state["position"] == 1
    reminder = outbound.send_reminder(session, invitation, 1, SENT + dt.timedelta(days=2))
    assert reminder is not None
    assert reminder.body.startswith("Reminder: ") and "Q2/15" in reminder.body
    assert segments(reminder.body) == 1


def test_an_sms_link_invitation_gets_a_short_reminder_with_its_link(session, factory, outbound):
    ask = ("staff_morale", {"roles": ["care_worker"]}, "sms")
    invitation, _ = _invite(session, factory, ask)
    invitation.wave.instruments[0].sms_mode = "link"
    outbound.send_invitation(session, invitation, SENT)
    reminder = outbound.send_reminder(session, invitation, 2, SENT + dt.timedelta(days=5))
    assert reminder is not None and outbound.link(invitation) in reminder.body
    assert "STOP to opt out" in reminder.body and segments(reminder.body) == 1


def test_an_email_reminder_links_back_to_where_they_stopped(session, factory, outbound):
    invitation, _ = _invite(session, factory, SELF_REPORT, role="manager")
    outbound.send_invitation(session, invitation, SENT)
    record_answer(session, invitation, "stress", 4, "web", SENT + dt.timedelta(hours=1))
    reminder = outbound.send_reminder(session, invitation, 1, SENT + dt.timedelta(days=2))
    assert reminder is not None and reminder.channel == "email"
    assert reminder.subject.startswith("Reminder: ")
    assert "where you stopped" in reminder.body and outbound.link(invitation) in reminder.body


def test_no_reminder_once_the_invitation_no_longer_wants_one(session, factory, outbound):
    invitation, person = _invite(session, factory, MORALE)
    outbound.send_invitation(session, invitation, SENT)
    day2 = SENT + dt.timedelta(days=2)
    assert outbound.send_reminder(session, invitation, 3, day2) is None  # past `max`
    assert outbound.send_reminder(session, invitation, 1, CLOSES) is None  # wave closed
    handle_inbound(session, InboundSms(person.mobile, "+1", "STOP", None), SENT)
    assert invitation.status == "opted_out"
    assert outbound.send_reminder(session, invitation, 1, day2) is None
    assert due_reminders(session, day2) == []


def test_no_reminder_after_completion_or_failure(session, factory, outbound):
    invitation, _ = _invite(session, factory, SELF_REPORT, role="manager")
    outbound.send_invitation(session, invitation, SENT)
    day2 = SENT + dt.timedelta(days=2)
    assert [d.number for d in due_reminders(session, day2)] == [1]
    complete_response(session, invitation, SENT + dt.timedelta(days=1))
    assert due_reminders(session, day2) == []
    assert outbound.send_reminder(session, invitation, 1, day2) is None
    other, _ = _invite(session, factory, MORALE)
    outbound.send_invitation(session, other, SENT)
    set_status(other, "failed", SENT)
    assert outbound.send_reminder(session, other, 1, day2) is None


def test_tick_queues_each_reminder_once_and_not_for_pending_invitations(session, factory):
    invitation, _ = _invite(session, factory, MORALE)
    day2 = SENT + dt.timedelta(days=2)
    tick(session, day2)  # never sent: nothing to remind of
    assert session.scalars(select(OutboxItem.purpose)).all() == ["invitation"]
    set_status(invitation, "sent", SENT)
    assert tick(session, day2).reminders == 1
    assert tick(session, day2 + dt.timedelta(minutes=1)).reminders == 0
    assert tick(session, SENT + dt.timedelta(days=5)).reminders == 1
    assert tick(session, SENT + dt.timedelta(days=9)).reminders == 0
    numbers = session.scalars(
        select(OutboxItem.reminder_number).where(OutboxItem.purpose == "reminder")
    ).all()
    assert sorted(numbers) == [1, 2]
