"""The clock: a wave from opening to closing, with reminders, quiet hours and clock changes.

`time_machine` moves the clock; the development phone and mailbox receive what is sent,
and `due_work` (one tick, then one dispatch) does the sending, as `carepulse send-due` does.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from bot.clock import due_work, make_scheduler, run_tick, run_weekly_mail, tick
from bot.outbound import Outbound
from bot.transports import DevMailbox, DevPhone
from storage import db as storage_db
from storage.models import Invitation, Message, OutboxItem, Person
from surveys.sms_inbox import InboundSms, handle_inbound
from tests.support.web import make_app

UTC = dt.UTC
REMINDERS = {"after_days": [2, 5], "max": 2}
MORALE = ("staff_morale", {"roles": ["care_worker"]}, "sms")
SELF_REPORT = ("manager_self_report", {"roles": ["manager"]}, "email")


@pytest.fixture
def settings(engine, database_url, tmp_path):
    # No pacing: the suite need not wait.
    app = make_app(database_url, tmp_path, SEND_RATE_PER_SECOND="0")
    return app.config["CAREPULSE"]


@pytest.fixture
def outbound(settings):
    return Outbound(settings, DevPhone(), DevMailbox())


def _wave(factory, people_roles, opens, days=14, asks=(MORALE, SELF_REPORT)):
    home = factory.home("Willow Court")
    people = [factory.person(home, role=role) for role in people_roles]
    _, wave = factory.programme(
        [home], list(asks), opens=opens, closes=opens + dt.timedelta(days=days)
    )
    wave.reminders = dict(REMINDERS)
    factory.session.commit()
    return wave, people


def _run(session, outbound, time_machine, when):
    time_machine.move_to(when, tick=False)
    report = due_work(session, outbound)
    session.commit()
    return report


def _texts(session, person):
    session.expire_all()
    return session.scalars(
        select(Message)
        .where(Message.person_id == person.id, Message.direction == "out")
        .order_by(Message.id)
    ).all()


def _reply(session, person, body, when):
    handle_inbound(session, InboundSms(person.mobile, "+447700900999", body, None), when)
    session.commit()


def _status(session, person):
    session.expire_all()
    return session.scalars(select(Invitation.status).where(Invitation.person_id == person.id)).one()


def _outbox(session, purpose=None):
    session.expire_all()
    stmt = select(OutboxItem).order_by(OutboxItem.id)
    if purpose:
        stmt = stmt.where(OutboxItem.purpose == purpose)
    return session.scalars(stmt).all()


def test_a_wave_from_opening_to_closing(session, factory, outbound, time_machine):
    opens = dt.datetime(2027, 1, 4, 9, 0, tzinfo=UTC)  # Monday, GMT
    wave, (answers, ignores, stops, manager) = _wave(
        factory, ["care_worker", "care_worker", "care_worker", "manager"], opens
    )

    before = _run(session, outbound, time_machine, opens - dt.timedelta(minutes=1))
    assert before.opened == before.invited == before.sent == 0
    assert _outbox(session) == []

    opening = _run(session, outbound, time_machine, opens)
    assert (opening.opened, opening.invited, opening.queued, opening.sent) == (1, 4, 4, 4)
    rows = _outbox(session, "invitation")
    assert len(rows) == 4 and {r.status for r in rows} == {"sent"}
    assert {r.not_before for r in rows} == {opens}
    assert all(len(_texts(session, p)) == 1 for p in (answers, ignores, stops, manager))
    again = _run(session, outbound, time_machine, opens + dt.timedelta(minutes=1))
    assert again.invited == again.queued == again.sent == 0

    _reply(session, answers, "4", opens + dt.timedelta(minutes=30))
    _reply(session, stops, "STOP", opens + dt.timedelta(hours=1))
    assert _status(session, answers) == "completed"
    assert _status(session, stops) == "opted_out"

    day2 = opens + dt.timedelta(days=2)
    early = _run(session, outbound, time_machine, day2 - dt.timedelta(minutes=1))
    assert early.reminders == early.sent == 0
    first = _run(session, outbound, time_machine, day2)
    assert (first.reminders, first.sent) == (2, 2)
    ignored = _texts(session, ignores)
    assert len(ignored) == 2 and ignored[1].created_at == day2
    assert ignored[1].body == ignored[0].body  # nothing answered yet: the opening again
    mails = _texts(session, manager)
    assert mails[1].subject.startswith("Reminder: ") and mails[1].created_at == day2

    # An unclear reply on day 3 starts the conversation: reminder 2 re-asks the question.
    _reply(session, ignores, "dunno", opens + dt.timedelta(days=3))
    assert _status(session, ignores) == "started"
    day5 = opens + dt.timedelta(days=5)
    second = _run(session, outbound, time_machine, day5)
    assert (second.reminders, second.sent) == (2, 2)
    ignored = _texts(session, ignores)
    assert len(ignored) == 3 and ignored[2].body.startswith("Reminder: ")
    assert "Reply 1-5" in ignored[2].body
    assert "where you stopped" not in _texts(session, manager)[2].body  # never started

    for day in range(6, 14):  # at most `max` reminders
        later = _run(session, outbound, time_machine, opens + dt.timedelta(days=day))
        assert later.reminders == later.sent == 0
    closing = _run(session, outbound, time_machine, wave.closes_at)
    assert closing.expired == 2

    assert [len(_texts(session, p)) for p in (answers, stops, ignores, manager)] == [1, 1, 3, 3]
    reminders = _outbox(session, "reminder")
    assert sorted((r.invitation.person_id, r.reminder_number) for r in reminders) == sorted(
        [(ignores.id, 1), (ignores.id, 2), (manager.id, 1), (manager.id, 2)]
    )
    assert {r.status for r in reminders} == {"sent"}
    assert _status(session, ignores) == _status(session, manager) == "expired"


def test_closing_cancels_what_is_still_queued(session, factory, outbound, time_machine):
    opens = dt.datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
    wave, (worker,) = _wave(factory, ["care_worker"], opens, days=2, asks=[MORALE])
    wave.closes_at = opens + dt.timedelta(days=2, hours=1)
    session.commit()
    _run(session, outbound, time_machine, opens)
    time_machine.move_to(opens + dt.timedelta(days=2), tick=False)
    planned = tick(session)  # the reminder is queued, and the dispatcher is late
    session.commit()
    assert planned.reminders == 1
    assert [r.status for r in _outbox(session, "reminder")] == ["queued"]
    closing = _run(session, outbound, time_machine, wave.closes_at)
    assert closing.expired == 1 and closing.cancelled == 1 and closing.sent == 0
    assert [r.status for r in _outbox(session, "reminder")] == ["cancelled"]
    assert len(_texts(session, worker)) == 1


def test_nothing_goes_out_at_three_in_the_morning(session, factory, outbound, time_machine):
    opens = dt.datetime(2027, 1, 4, 3, 0, tzinfo=UTC)
    _, people = _wave(factory, ["care_worker", "manager"], opens)

    night = _run(session, outbound, time_machine, opens)
    assert (night.opened, night.invited, night.queued, night.sent) == (1, 2, 2, 0)
    nine = dt.datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
    assert {(r.status, r.not_before) for r in _outbox(session)} == {("queued", nine)}
    assert all(_texts(session, p) == [] for p in people)

    # Even a row that says it is due is held by the dispatcher until the window opens.
    for row in _outbox(session):
        row.not_before = opens - dt.timedelta(hours=1)
    session.commit()
    held = _run(session, outbound, time_machine, opens + dt.timedelta(minutes=5))
    assert held.sent == 0 and all(_texts(session, p) == [] for p in people)

    morning = _run(session, outbound, time_machine, nine)
    assert morning.sent == 2
    assert all(len(_texts(session, p)) == 1 for p in people)


@pytest.mark.parametrize(
    ("opens", "sunday_nine_local"),
    [
        # Friday 27 March 2026, 09:00 GMT; the clocks go forward on Sunday 29 March.
        (dt.datetime(2026, 3, 27, 9, 0, tzinfo=UTC), dt.datetime(2026, 3, 29, 8, 0, tzinfo=UTC)),
        # Friday 23 October 2026, 09:00 BST; the clocks go back on Sunday 25 October.
        (dt.datetime(2026, 10, 23, 8, 0, tzinfo=UTC), dt.datetime(2026, 10, 25, 9, 0, tzinfo=UTC)),
    ],
    ids=["spring", "autumn"],
)
def test_the_day_two_reminder_goes_at_nine_local_across_a_clock_change(
    session, factory, outbound, time_machine, opens, sunday_nine_local
):
    _, (worker,) = _wave(factory, ["care_worker"], opens, asks=[MORALE])
    assert _run(session, outbound, time_machine, opens).sent == 1
    for hour in range(6, 9):  # 48 hours later is not "day 2 at the same local time"
        when = dt.datetime(2026, opens.month, opens.day + 2, hour, 59, tzinfo=UTC)
        if when < sunday_nine_local:
            assert _run(session, outbound, time_machine, when).reminders == 0
    due = _run(session, outbound, time_machine, sunday_nine_local)
    assert (due.reminders, due.sent) == (1, 1)
    reminder = _texts(session, worker)[1]
    assert reminder.created_at == sunday_nine_local
    [row] = _outbox(session, "reminder")
    assert row.not_before == sunday_nine_local and row.status == "sent"


def _count(session, model):
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model))


def test_two_clocks_ticking_queue_each_message_once(session, engine, factory, outbound):
    opens = dt.datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
    _wave(factory, ["care_worker"] * 3 + ["manager"], opens)
    sessions = storage_db.make_sessionmaker(engine)
    with sessions() as one, sessions() as two:
        for clock in (one, two, one, two):  # two clocks, each ticking twice
            tick(clock, opens)
            clock.commit()
        assert _count(session, OutboxItem) == _count(session, Invitation) == 4
        due_work(session, outbound, opens)
        session.commit()
        day2 = opens + dt.timedelta(days=2)
        for clock in (one, two, one, two):
            tick(clock, day2)
            clock.commit()
    reminders = _outbox(session, "reminder")
    assert len(reminders) == 4
    assert len({r.key for r in reminders}) == 4


def test_two_clocks_at_the_same_instant_send_nothing_twice(session, engine, factory, outbound):
    opens = dt.datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
    _wave(factory, ["care_worker"] * 4 + ["manager"], opens)
    sessions = storage_db.make_sessionmaker(engine)
    start = threading.Barrier(2)
    done: list[bool] = []

    def clock() -> None:
        with sessions() as own:
            start.wait()
            # A tick that clashes with the other clock's (SQLite: "database is locked";
            # PostgreSQL: a duplicate invitation) is rolled back and runs again later, as
            # the clock's job does a minute later.
            for _ in range(50):
                try:
                    tick(own, opens)
                    own.commit()
                    done.append(True)
                    return
                except (IntegrityError, OperationalError):
                    own.rollback()
                    time.sleep(0.1)

    threads = [threading.Thread(target=clock) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert done == [True, True]
    assert _count(session, Invitation) == 5
    assert _count(session, OutboxItem) == 5
    sent = due_work(session, outbound, opens)
    session.commit()
    assert sent.sent == 5
    again = due_work(session, outbound, opens + dt.timedelta(minutes=1))
    assert again.sent == 0
    assert _count(session, Message) == 5


def test_the_scheduler_runs_the_tick_every_minute_and_the_weekly_email_on_monday(
    session, engine, factory, settings, time_machine
):
    from apscheduler.schedulers.background import BackgroundScheduler

    opens = dt.datetime(2027, 1, 4, 9, 0, tzinfo=UTC)
    wave, _ = _wave(factory, ["care_worker"], opens, asks=[MORALE])
    programme = wave.cohort.programme
    programme.settings = {"leads": ["lead@example.org"]}
    session.commit()
    sessions = storage_db.make_sessionmaker(engine)
    scheduler = make_scheduler(
        sessions, settings, DevMailbox(), ["Europe/London"], scheduler_class=BackgroundScheduler
    )
    scheduler.start(paused=True)
    try:
        jobs = {job.id: job for job in scheduler.get_jobs()}
        assert set(jobs) == {"tick", "weekly-mail Europe/London", "retention-purge"}
        for job in jobs.values():
            assert job.coalesce is True and job.max_instances == 1
        assert jobs["tick"].trigger.interval == dt.timedelta(minutes=1)
        weekly = jobs["weekly-mail Europe/London"].trigger
        winter = weekly.get_next_fire_time(None, dt.datetime(2027, 1, 5, tzinfo=UTC))
        summer = weekly.get_next_fire_time(None, dt.datetime(2027, 6, 1, tzinfo=UTC))
        assert winter.astimezone(UTC) == dt.datetime(2027, 1, 11, 8, 0, tzinfo=UTC)
        assert summer.astimezone(UTC) == dt.datetime(2027, 6, 7, 7, 0, tzinfo=UTC)  # BST

        time_machine.move_to(opens, tick=False)
        report = run_tick(sessions)  # the job itself: its own session, committed
        assert report is not None and report.opened == 1 and report.queued == 1
        assert _count(session, OutboxItem) == 1

        time_machine.move_to(dt.datetime(2027, 1, 11, 8, 0, tzinfo=UTC), tick=False)
        [mailed] = run_weekly_mail(sessions, settings, DevMailbox(), "Europe/London")
        assert [m.to_address for m in mailed.messages] == ["lead@example.org"]
        [again] = run_weekly_mail(sessions, settings, DevMailbox(), "Europe/London")
        assert again.messages == [] and again.skipped == ["lead@example.org"]
    finally:
        scheduler.shutdown(wait=False)


def test_the_clock_process_starts_and_stops_on_sigterm(engine, database_url, tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "SMTP_HOST"):
        env.pop(name, None)
    command = [str(Path(sys.executable).with_name("carepulse")), "clock"]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "carepulse clock: running" in first, first
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "carepulse clock: stopped" in output


def test_send_due_prints_what_it_planned_and_sent(runner, session, factory):
    from bot.cli import cli

    now = dt.datetime.now(UTC)
    home = factory.home()
    factory.person(home, role="manager")
    factory.programme([home], [SELF_REPORT], opens=now - dt.timedelta(hours=1))
    session.commit()
    result = runner.invoke(cli, ["send-due"])
    assert result.exit_code == 0, result.output
    assert "waves opened: 1, invitations created: 1, queued: 1" in result.output
    assert _count(session, Person) == 1 and _count(session, OutboxItem) == 1
