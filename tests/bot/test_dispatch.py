"""The outbox dispatcher through the official Twilio SDK and a Twilio-compatible server on
loopback: claiming, sending once, the send window, cancelling, backoff, pacing, reconciling
after a crash, and (PostgreSQL) several dispatcher processes sharing one queue."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from bot.cli import cli
from bot.config import ConfigError, load_settings
from bot.dispatch import (
    Backoff,
    Pacer,
    TokenBucket,
    claim,
    dispatch_once,
    reconcile,
)
from bot.outbound import Outbound
from bot.transports import DevMailbox, DevPhone, TwilioSms
from storage import db as storage_db
from storage.models import Invitation, Message, OutboxItem, utcnow
from surveys.invitations import open_wave, set_status
from surveys.opt_outs import opt_out
from surveys.outbox import enqueue
from tests.support.bulk import insert_care_workers, insert_pending_invitations
from tests.support.send_window import daytime_zone
from tests.support.web import twilio_settings

ROOT = Path(__file__).resolve().parents[2]
STAFF = ["deputy_manager", "nurse", "senior_care_worker", "care_worker"]
MORALE = [("staff_morale", {"roles": STAFF}, "sms")]
SELF_REPORT = [("manager_self_report", {"roles": ["manager"]}, "email")]
NO_PACING = Pacer(0)
WORKER = "test-worker"


NOW = dt.datetime.now(dt.UTC)
# Messages go out only inside the programme's window; these tests send at the real time
# (the fake Twilio stamps real times), so the programme's zone is chosen to make it day.
ZONE = daytime_zone(NOW)


def _fresh(session):
    """End the test's transaction and forget loaded rows, to see what was committed."""
    session.rollback()
    session.expire_all()


def _programme(session, factory, asks=MORALE, people=1, role="care_worker", **person):
    home = factory.home("Willow Court")
    workers = [factory.person(home, role=role, **person) for _ in range(people)]
    programme, wave = factory.programme(
        [home], asks, opens=NOW - dt.timedelta(days=1), closes=NOW + dt.timedelta(days=7)
    )
    programme.timezone = ZONE
    open_wave(session, wave, NOW)
    invitations = session.scalars(select(Invitation).order_by(Invitation.id)).all()
    for invitation in invitations:
        enqueue(session, invitation, "invitation", not_before=NOW)
    session.commit()
    return programme, wave, workers, invitations


def _outbound(live, sms=None, email=None):
    settings = live.settings()
    return Outbound(settings, sms or TwilioSms(settings, timeout=5), email or DevMailbox())


def _rows(session):
    _fresh(session)
    return session.scalars(select(OutboxItem).order_by(OutboxItem.id)).all()


def _dispatch(session, outbound, now=NOW, **kw):
    kw.setdefault("pacer", NO_PACING)
    kw.setdefault("worker_id", WORKER)
    report = dispatch_once(session, outbound, now, **kw)
    _fresh(session)
    return report


# --------------------------------------------------------------------------- sending once


def test_a_queued_invitation_is_sent_once(session, factory, live_twilio_app, twilio_fake):
    _, _, (worker,), (invitation,) = _programme(session, factory, given_name="Amara")
    outbound = _outbound(live_twilio_app)
    report = _dispatch(session, outbound)
    assert (report.claimed, report.sent) == (1, 1)
    (sent,) = twilio_fake.messages
    assert sent["to"] == worker.mobile and "Amara" in sent["body"]
    (row,) = _rows(session)
    assert (row.status, row.attempts, row.claimed_by) == ("sent", 1, WORKER)
    message = session.get(Message, row.message_id)
    assert message.provider_id == sent["sid"] and message.invitation_id == invitation.id
    assert session.get(Invitation, invitation.id).status == "sent"

    again = _dispatch(session, outbound, NOW + dt.timedelta(minutes=5))
    assert again.claimed == 0
    assert len(twilio_fake.messages) == 1
    assert session.scalar(select(func.count()).select_from(Message)) == 1


def test_claim_commits_before_sending_and_takes_a_row_once(session, factory, live_twilio_app):
    _programme(session, factory, people=3)
    rows = claim(session, "first", NOW, limit=2)
    assert [r.status for r in rows] == ["sending", "sending"]
    _fresh(session)
    stored = session.scalars(select(OutboxItem).order_by(OutboxItem.id)).all()
    assert [r.status for r in stored] == ["sending", "sending", "queued"]
    assert {r.claimed_by for r in stored[:2]} == {"first"} and stored[0].attempts == 1
    second = claim(session, "second", NOW, limit=10)
    assert [r.id for r in second] == [stored[2].id]
    assert claim(session, "third", NOW, limit=10) == []


def test_threads_send_each_message_once(session, factory, live_twilio_app, twilio_fake, engine):
    _programme(session, factory, people=30)
    sessions = storage_db.make_sessionmaker(engine)
    report = dispatch_once(
        sessions, _outbound(live_twilio_app), NOW, WORKER, threads=4, pacer=NO_PACING
    )
    assert (report.claimed, report.sent) == (30, 30)
    assert sorted(Counter(m["to"] for m in twilio_fake.messages).values()) == [1] * 30
    assert {r.status for r in _rows(session)} == {"sent"}


# --------------------------------------------------------------------------- not now, not at all


def test_outside_the_window_waits_for_its_opening(session, factory, live_twilio_app, twilio_fake):
    programme, *_ = _programme(session, factory)
    programme.timezone = "Europe/London"
    programme.settings = {"send_window": {"start": "09:00", "end": "17:00"}}
    session.commit()
    london = NOW.astimezone(ZoneInfo("Europe/London"))
    late = dt.datetime.combine(london.date(), dt.time(22, 0), tzinfo=london.tzinfo)
    report = _dispatch(session, _outbound(live_twilio_app), late)
    assert (report.claimed, report.deferred, report.sent) == (1, 1, 0)
    (row,) = _rows(session)
    opening = dt.datetime.combine(
        london.date() + dt.timedelta(days=1), dt.time(9, 0), tzinfo=london.tzinfo
    )
    assert (row.status, row.attempts) == ("queued", 0)
    assert row.not_before == opening.astimezone(dt.UTC)
    assert twilio_fake.messages == []


@pytest.mark.parametrize("how", ["completed", "opted_out", "opted_out_unrecorded", "closed"])
def test_an_unwanted_message_is_cancelled(session, factory, live_twilio_app, twilio_fake, how):
    _, wave, (worker,), (invitation,) = _programme(session, factory)
    now = NOW
    if how == "completed":
        set_status(invitation, "completed", NOW)
    elif how == "opted_out":
        opt_out(session, "sms", worker.mobile, "STOP", worker, NOW)
    elif how == "opted_out_unrecorded":  # the opt-out is known, the invitation not yet closed
        opt_out(session, "sms", worker.mobile, "STOP", None, NOW)
    else:
        now = wave.closes_at + dt.timedelta(minutes=1)
    session.commit()
    report = _dispatch(session, _outbound(live_twilio_app), now)
    assert (report.cancelled, report.sent) == (1, 0)
    (row,) = _rows(session)
    assert row.status == "cancelled" and row.last_error
    assert twilio_fake.messages == []


def _two_surveys(session, factory, second_mode: str):
    """A care worker asked two things by text (morale, and a 360 in `second_mode`), and a
    colleague asked the morale question; every invitation queued."""
    home = factory.home("Willow Court")
    factory.person(home, role="manager")
    worker = factory.person(home, role="care_worker")
    colleague = factory.person(home, role="nurse")
    appraisal = (
        "appraisal_360",
        {"subject_role": "manager", "raters": {"staff": ["care_worker"]}},
        "sms",
    )
    programme, wave = factory.programme(
        [home], [MORALE[0], appraisal], opens=NOW - dt.timedelta(days=1)
    )
    wave.closes_at = NOW + dt.timedelta(days=7)
    programme.timezone = ZONE
    wave.instruments[1].sms_mode = second_mode
    open_wave(session, wave, NOW)
    invitations = session.scalars(select(Invitation).order_by(Invitation.id)).all()
    for invitation in invitations:
        enqueue(session, invitation, "invitation", not_before=NOW)
    session.commit()
    mine = [i for i in invitations if i.person_id == worker.id]
    theirs = [i for i in invitations if i.person_id == colleague.id]
    assert len(mine) == 2 and len(theirs) == 1
    return mine, theirs


def _row_of(session, invitation):
    return session.scalars(
        select(OutboxItem).where(OutboxItem.invitation_id == invitation.id)
    ).one()


def test_a_second_conversation_waits_for_the_first(session, factory, live_twilio_app, twilio_fake):
    (first, second), _ = _two_surveys(session, factory, "conversation")
    report = _dispatch(session, _outbound(live_twilio_app))
    assert (report.sent, report.deferred) == (2, 1)  # the colleague's and the first
    assert _row_of(session, first).status == "sent"
    waiting = _row_of(session, second)
    assert (waiting.status, waiting.attempts) == ("queued", 0)
    assert waiting.not_before == NOW + dt.timedelta(minutes=30)
    assert len(twilio_fake.messages) == 2


def _in_flight_at_twilio(session, invitation):
    """As another dispatcher leaves a text it is handing to Twilio: journaled, `sending`."""
    message = Message(
        direction="out",
        channel="sms",
        person_id=invitation.person_id,
        invitation_id=invitation.id,
        to_address=invitation.person.mobile,
        from_address="twilio",
        body="in flight",
        status="queued",
    )
    session.add(message)
    session.flush()
    row = _row_of(session, invitation)
    row.status, row.claimed_by, row.claimed_at = "sending", "another", NOW
    row.message_id = message.id
    session.commit()


def test_a_text_waits_while_another_to_the_same_person_is_in_flight(
    session, factory, live_twilio_app, twilio_fake
):
    (first, second), (colleagues,) = _two_surveys(session, factory, "link")
    _in_flight_at_twilio(session, first)
    report = _dispatch(session, _outbound(live_twilio_app))
    assert (report.claimed, report.sent, report.deferred) == (2, 1, 1)
    waiting = _row_of(session, second)
    assert (waiting.status, waiting.attempts) == ("queued", 0)
    assert waiting.not_before == NOW + dt.timedelta(seconds=30)
    assert _row_of(session, colleagues).status == "sent"  # other people are not held up
    (sent,) = twilio_fake.messages
    assert sent["to"] == colleagues.person.mobile


def test_a_reminder_goes_through_send_reminder(session, factory, live_twilio_app, twilio_fake):
    _, wave, _, (invitation,) = _programme(session, factory)
    wave.reminders = {"after_days": [2], "max": 1}
    session.commit()
    outbound = _outbound(live_twilio_app)
    assert _dispatch(session, outbound).sent == 1
    enqueue(session, session.get(Invitation, invitation.id), "reminder", 1, not_before=NOW)
    session.commit()
    report = _dispatch(session, outbound, NOW + dt.timedelta(minutes=1))
    assert (report.claimed, report.sent) == (1, 1)
    reminder = _rows(session)[1]
    assert (reminder.purpose, reminder.status) == ("reminder", "sent")
    assert len(twilio_fake.messages) == 2


# --------------------------------------------------------------------------- failures


def test_a_429_is_retried_after_backoff(session, factory, live_twilio_app, twilio_fake):
    _, _, _, (invitation,) = _programme(session, factory)
    outbound = _outbound(live_twilio_app)
    twilio_fake.fail_next(429, 20429)
    report = _dispatch(session, outbound, rng=random.Random(7))
    assert (report.retried, report.sent) == (1, 0)
    (row,) = _rows(session)
    assert (row.status, row.attempts) == ("queued", 1)
    assert NOW < row.not_before <= NOW + dt.timedelta(seconds=30)
    assert row.last_error.startswith("20429")
    assert session.get(Invitation, invitation.id).status == "pending"
    assert twilio_fake.messages == []

    assert _dispatch(session, outbound, row.not_before - dt.timedelta(seconds=1)).claimed == 0
    report = _dispatch(session, outbound, NOW + dt.timedelta(hours=1))
    assert report.sent == 1
    (row,) = _rows(session)
    (sent,) = twilio_fake.messages
    assert (row.status, row.attempts) == ("sent", 2)
    assert session.get(Message, row.message_id).provider_id == sent["sid"]
    statuses = session.scalars(select(Message.status).order_by(Message.id)).all()
    assert statuses == ["error", "queued"]  # the refused try is kept, the new one went
    assert session.get(Invitation, invitation.id).status == "sent"


def test_transient_failures_give_up_after_eight_attempts(
    session, factory, live_twilio_app, twilio_fake
):
    _, _, _, (invitation,) = _programme(session, factory)
    outbound = _outbound(live_twilio_app)
    twilio_fake.fail_next(500, times=8)
    backoff = Backoff(base=dt.timedelta(seconds=1), cap=dt.timedelta(seconds=30))
    now = NOW
    for attempt in range(1, 9):
        report = _dispatch(session, outbound, now, backoff=backoff)
        assert report.claimed == 1, attempt
        now += dt.timedelta(minutes=1)
    assert (report.failed, report.retried) == (1, 0)
    (row,) = _rows(session)
    assert (row.status, row.attempts) == ("failed", 8)
    assert "gave up after 8 attempts" in row.last_error
    assert session.get(Invitation, invitation.id).status == "failed"
    assert twilio_fake.messages == [] and twilio_fake.pending_faults == 0


def test_a_permanent_refusal_fails_the_message(session, factory, live_twilio_app, twilio_fake):
    _, _, _, (invitation,) = _programme(session, factory)
    twilio_fake.fail_next(400, 21211)
    report = _dispatch(session, _outbound(live_twilio_app))
    assert (report.failed, report.retried) == (1, 0)
    (row,) = _rows(session)
    assert row.status == "failed" and row.last_error.startswith("21211")
    assert session.get(Message, row.message_id).status == "failed"
    assert session.get(Invitation, invitation.id).status == "failed"


def test_backoff_is_exponential_with_full_jitter():
    backoff = Backoff()
    rng = random.Random(3)
    for attempt in range(1, 12):
        ceiling = min(3600, 30 * 2 ** (attempt - 1))
        delays = [backoff.delay(attempt, rng).total_seconds() for _ in range(200)]
        assert all(1 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole range (full jitter)


# --------------------------------------------------------------------------- pacing


class FakeClock:
    """A monotonic clock that moves only when someone sleeps on it."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_token_bucket_queues_callers_behind_each_other():
    clock = FakeClock()
    bucket = TokenBucket(5, clock=clock.clock, sleep=clock.sleep)
    waits = [bucket.reserve() for _ in range(8)]  # nobody sleeps: the clock stands still
    assert waits == pytest.approx([0, 0, 0, 0, 0, 0.2, 0.4, 0.6])
    clock.now += 10
    assert bucket.reserve() == 0  # refilled, never beyond one second's worth


def test_pacing_spaces_sends_at_the_configured_rate(session, factory, live_twilio_app, twilio_fake):
    _programme(session, factory, people=20)
    clock = FakeClock()
    pacer = Pacer(5, clock=clock.clock, sleep=clock.sleep)
    report = _dispatch(session, _outbound(live_twilio_app), pacer=pacer)
    assert report.sent == 20 and len(twilio_fake.messages) == 20
    assert clock.sleeps == pytest.approx([0.2] * 15)  # 5 at once, then one every 0.2 s
    assert sum(clock.sleeps) == pytest.approx(3.0)


def test_send_rate_setting(tmp_path):
    def rate(value):
        env = {"INSTANCE_PATH": str(tmp_path), "SEND_RATE_PER_SECOND": value}
        return load_settings(env).send_rate

    assert rate("") == 10.0
    assert rate("2.5") == 2.5
    assert rate("0") == 0.0 and rate("off") == 0.0 and rate("OFF") == 0.0
    for bad in ("-1", "fast", "nan", "inf", "1e400"):
        with pytest.raises(ConfigError, match="SEND_RATE_PER_SECOND"):
            rate(bad)


# --------------------------------------------------------------------------- reconcile


class Crash(BaseException):
    """A dispatcher dying mid-send (not an Exception: nothing in the code catches it)."""


class CrashingSms:
    """Hands the text on (`after=True`) or not, then dies, like a process killed mid-send."""

    def __init__(self, inner, after: bool) -> None:
        self.inner, self.after, self.name = inner, after, inner.name

    def send_sms(self, to, body):
        if self.after:
            self.inner.send_sms(to, body)
        raise Crash


class CrashingMail:
    """Sends the email to the development mailbox, then dies before recording it."""

    name = "dev-mailbox"

    def send_email(self, to, subject, body, html=None, headers=None):
        DevMailbox().send_email(to, subject, body, html, headers)
        raise Crash


def _crash(session, outbound):
    with pytest.raises(Crash):
        dispatch_once(session, outbound, NOW, WORKER, pacer=NO_PACING)
    (row,) = _rows(session)
    assert row.status == "sending" and row.message_id is not None
    assert session.get(Message, row.message_id).status == "queued"
    return row


def test_reconcile_finds_a_text_twilio_has(session, factory, live_twilio_app, twilio_fake):
    _, _, _, (invitation,) = _programme(session, factory)
    outbound = _outbound(live_twilio_app)
    crashing = _outbound(live_twilio_app, sms=CrashingSms(outbound.sms, after=True))
    _crash(session, crashing)
    (sent,) = twilio_fake.messages

    early = reconcile(session, outbound, NOW + dt.timedelta(minutes=5))
    assert (early.sent, early.requeued) == (0, 0)  # not stale yet
    report = reconcile(session, outbound, NOW + dt.timedelta(minutes=11))
    assert (report.sent, report.requeued, report.reconcile) == (1, 0, 0)
    (row,) = _rows(session)
    assert row.status == "sent"
    assert session.get(Message, row.message_id).provider_id == sent["sid"]
    assert session.get(Invitation, invitation.id).status == "sent"
    assert _dispatch(session, outbound, NOW + dt.timedelta(minutes=12)).claimed == 0
    assert len(twilio_fake.messages) == 1


def test_reconcile_requeues_a_text_twilio_lacks(session, factory, live_twilio_app, twilio_fake):
    _programme(session, factory)
    outbound = _outbound(live_twilio_app)
    _crash(session, _outbound(live_twilio_app, sms=CrashingSms(outbound.sms, after=False)))
    assert twilio_fake.messages == []
    report = reconcile(session, outbound, NOW + dt.timedelta(minutes=11))
    assert (report.sent, report.requeued) == (0, 1)
    (row,) = _rows(session)
    assert (row.status, row.attempts) == ("queued", 1)
    assert session.get(Message, row.message_id).status == "error"
    again = _dispatch(session, outbound, NOW + dt.timedelta(minutes=12))
    assert again.sent == 1
    assert len(twilio_fake.messages) == 1
    assert _rows(session)[0].status == "sent"


def test_reconcile_requeues_a_claim_that_never_sent(session, factory, live_twilio_app):
    _programme(session, factory, people=2)
    claim(session, "dead-worker", NOW, limit=10)
    report = reconcile(session, _outbound(live_twilio_app), NOW + dt.timedelta(minutes=11))
    assert report.requeued == 2
    assert [(r.status, r.attempts) for r in _rows(session)] == [("queued", 0)] * 2


def test_an_email_in_doubt_waits_for_a_person(session, factory, app, runner):
    _programme(session, factory, asks=SELF_REPORT, role="manager")
    settings = app.config["CAREPULSE"]
    row = _crash(session, Outbound(settings, DevPhone(), CrashingMail()))
    report = reconcile(
        session, Outbound(settings, DevPhone(), DevMailbox()), NOW + dt.timedelta(minutes=11)
    )
    assert report.reconcile == 1
    assert _rows(session)[0].status == "reconcile"

    review = runner.invoke(cli, ["outbox", "review"])
    assert review.exit_code == 0, review.output
    assert f"  {row.id}: invitation by email to " in review.output
    unresolved = runner.invoke(cli, ["outbox", "resolve", str(row.id)])
    assert unresolved.exit_code == 1 and "--sent, --resend or --cancel" in unresolved.output
    done = runner.invoke(cli, ["outbox", "resolve", str(row.id), "--cancel"])
    assert done.exit_code == 0, done.output
    assert "cancelled" in done.output
    assert _rows(session)[0].status == "cancelled"
    twice = runner.invoke(cli, ["outbox", "resolve", str(row.id), "--sent"])
    assert twice.exit_code == 1 and "not in doubt" in twice.output
    assert runner.invoke(cli, ["outbox", "review"]).output.strip() == "no messages to review"


@pytest.mark.parametrize("decision", ["--sent", "--resend"])
def test_resolving_sent_or_resend(session, factory, app, runner, decision):
    _, _, _, (invitation,) = _programme(session, factory, asks=SELF_REPORT, role="manager")
    settings = app.config["CAREPULSE"]
    row = _crash(session, Outbound(settings, DevPhone(), CrashingMail()))
    reconcile(session, Outbound(settings, DevPhone(), DevMailbox()), NOW + dt.timedelta(minutes=11))
    result = runner.invoke(cli, ["outbox", "resolve", str(row.id), decision])
    assert result.exit_code == 0, result.output
    (row,) = _rows(session)
    if decision == "--sent":
        assert row.status == "sent"
        assert session.get(Invitation, invitation.id).status == "sent"
    else:
        assert (row.status, row.attempts) == ("queued", 0)
        report = _dispatch(
            session,
            Outbound(settings, DevPhone(), DevMailbox()),
            utcnow() + dt.timedelta(minutes=1),
        )
        assert report.sent == 1


def test_dispatch_once_from_the_command_line(session, factory, runner):
    _programme(session, factory, people=3)
    result = runner.invoke(cli, ["dispatch", "--once", "--worker-id", "cli-test"])
    assert result.exit_code == 0, result.output
    assert "sent: 3" in result.output
    rows = _rows(session)
    assert {(r.status, r.claimed_by) for r in rows} == {("sent", "cli-test")}


# --------------------------------------------------------------------------- many processes

DISPATCHER = """
import datetime as dt, sys
from bot import create_app
from bot.dispatch import Backoff, DispatcherOptions, run_dispatcher
options = DispatcherOptions(
    threads=4,
    reconcile_every=0.5,
    stale_after=dt.timedelta(seconds=float(sys.argv[2])),
    backoff=Backoff(base=dt.timedelta(seconds=0.2), cap=dt.timedelta(seconds=2)),
)
run_dispatcher(create_app(), sys.argv[1], poll_seconds=0.1, options=options)
"""


class Dispatchers:
    """`run_dispatcher` in separate processes, on the test database and the fake Twilio."""

    def __init__(self, database_url, fake, tmp_path) -> None:
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PUBLIC_BASE_URL": "http://127.0.0.1:9",
            "SECRET_KEY": "test-secret-key-for-the-suite",
            "INSTANCE_PATH": str(tmp_path / "instance"),
            **twilio_settings(),  # the account `fake` serves
            "TWILIO_MESSAGING_SERVICE_SID": "",
            "TWILIO_API_BASE_URL": fake.base_url,
            "SEND_RATE_PER_SECOND": "off",
            "SMTP_HOST": "",
        }
        self.tmp_path = tmp_path
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, name: str, stale_after: float = 600) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            [sys.executable, "-c", DISPATCHER, name, str(stale_after)],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[name] = process
        return process

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process in self.processes.items():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(f"dispatcher {name} did not stop on SIGTERM")

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{(self.tmp_path / f'{name}.log').read_text()[-3000:]}"
            for name in self.processes
        )


@pytest.fixture
def dispatchers(engine, database_url, twilio_fake, tmp_path):
    if engine.dialect.name != "postgresql":
        pytest.skip("several dispatchers at once need PostgreSQL (SQLite: one dispatcher)")
    group = Dispatchers(database_url, twilio_fake, tmp_path)
    yield group
    group.stop()


def _bulk(session, factory, count: int) -> list[Invitation]:
    """`count` care workers with one pending SMS invitation each, inserted in bulk."""
    home = factory.home("Bulk Home")
    programme, wave = factory.programme(
        [home], MORALE, opens=NOW - dt.timedelta(days=1), closes=NOW + dt.timedelta(days=7)
    )
    programme.timezone = ZONE
    wave.opened_at = NOW
    wave.instruments[0].sms_mode = "link"  # a text with the survey link (conversations: above)
    session.flush()
    ids = insert_care_workers(session, home.id, count, NOW)
    version = wave.instruments[0].instrument_version_id
    insert_pending_invitations(session, wave.id, version, ids, NOW)
    session.commit()
    return session.scalars(select(Invitation).order_by(Invitation.id)).all()


def _clock(engine, invitations, failures: list[BaseException]) -> None:
    """A clock queueing every invitation, committing every 250 (run two at once)."""
    try:
        with storage_db.make_sessionmaker(engine)() as session:
            for start in range(0, len(invitations), 250):
                for invitation in invitations[start : start + 250]:
                    enqueue(session, invitation, "invitation")
                session.commit()
    except BaseException as exc:  # reported by the test
        failures.append(exc)


def _enqueue_all(engine, invitations, clocks: int = 1) -> None:
    """`clocks` clocks at once, each queueing every invitation in id order, as `tick` does.

    (Two clocks inserting in opposite orders can deadlock on the unique key; PostgreSQL
    then fails one tick, which the clock retries: not what this test is about.)
    """
    failures: list[BaseException] = []
    threads = [
        threading.Thread(target=_clock, args=(engine, invitations, failures)) for _ in range(clocks)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


def _wait_all_sent(session, total: int, group: Dispatchers, timeout: float = 240) -> None:
    # A guard against a hang, not a speed target (bench/dispatch.py measures speed): on a
    # quiet machine this takes about 30 s; a loaded shared one needs far more.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _fresh(session)
        sent = session.scalar(
            select(func.count()).select_from(OutboxItem).where(OutboxItem.status == "sent")
        )
        if sent == total:
            return
        for name, process in group.processes.items():
            if process.poll() not in (None, -signal.SIGKILL):
                pytest.fail(f"dispatcher {name} exited {process.returncode}\n{group.logs()}")
        time.sleep(0.2)
    pytest.fail(f"{sent} of {total} sent after {timeout} s\n{group.logs()}")


def _assert_each_once(session, fake, total: int) -> list[OutboxItem]:
    messages = fake.messages
    per_number = Counter(m["to"] for m in messages)
    assert len(messages) == total and set(per_number.values()) == {1}
    rows = _rows(session)
    assert len(rows) == total and {r.status for r in rows} == {"sent"}
    stored = session.scalars(select(Message.provider_id).where(Message.status != "error")).all()
    assert sorted(stored) == sorted(m["sid"] for m in messages)
    return rows


@pytest.mark.slow
def test_three_dispatchers_and_two_clocks_send_5000_once(
    session, factory, engine, twilio_fake, dispatchers
):
    invitations = _bulk(session, factory, 5000)
    for name in ("d1", "d2", "d3"):
        dispatchers.start(name)
    _enqueue_all(engine, invitations, clocks=2)
    _wait_all_sent(session, 5000, dispatchers)
    dispatchers.stop()
    assert {p.returncode for p in dispatchers.processes.values()} == {0}
    rows = _assert_each_once(session, twilio_fake, 5000)
    assert {r.attempts for r in rows} == {1}
    assert len({r.claimed_by for r in rows}) == 3  # the three shared the work


@pytest.mark.slow
def test_a_killed_dispatcher_loses_and_doubles_nothing(
    session, factory, engine, twilio_fake, dispatchers
):
    invitations = _bulk(session, factory, 1000)
    _enqueue_all(engine, invitations)
    first = dispatchers.start("doomed")
    while len(twilio_fake.messages) < 200:
        assert first.poll() is None, dispatchers.logs()
        time.sleep(0.05)
    # Its four threads' next texts reach Twilio, which stalls, then accepts them after the
    # dispatcher is dead: only Twilio knows they went.
    twilio_fake.hang_next(2.0, times=4, method="POST")
    while twilio_fake.pending_faults:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    for name in ("after1", "after2"):
        dispatchers.start(name, stale_after=3.5)
    _wait_all_sent(session, 1000, dispatchers)
    rows = _assert_each_once(session, twilio_fake, 1000)
    found = [r for r in rows if r.last_error == "found at the provider by reconcile"]
    assert len(found) == 4  # the four in flight: found at Twilio, not sent again
    assert not [r for r in rows if r.status == "reconcile"]


@pytest.mark.slow
def test_a_429_and_500_storm_ends_with_everything_sent_once(
    session, factory, engine, twilio_fake, dispatchers
):
    invitations = _bulk(session, factory, 1000)
    twilio_fake.fail_next(429, 20429, times=300)
    twilio_fake.fail_next(500, times=100)
    for name in ("s1", "s2", "s3"):
        dispatchers.start(name)
    _enqueue_all(engine, invitations)
    _wait_all_sent(session, 1000, dispatchers)
    rows = _assert_each_once(session, twilio_fake, 1000)
    assert twilio_fake.pending_faults == 0
    assert sum(r.attempts for r in rows) == 1000 + 400  # every refusal was one attempt
