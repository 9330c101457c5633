"""The mail server goes down while the dispatcher sends invitation emails, then comes back.

Managers' invitations go through a real SMTP server on loopback (aiosmtpd). Part way
through, the server stops; the dispatcher's sends fail (refused connections), are recorded
as failed attempts and queued again with backoff; a new server on the same port takes
over. In the end every manager has received their invitation exactly once, every retry
is on record, and nothing is lost.
"""

from __future__ import annotations

import datetime as dt
import socket
import threading
import time
from collections import Counter

from sqlalchemy import func, select

from bot.dispatch import Backoff, DispatchReport, Pacer, dispatch_once
from bot.outbound import Outbound
from bot.transports import DevPhone, SmtpMail
from storage import db as storage_db
from storage.models import Invitation, Message, OutboxItem, Person, utcnow
from surveys.invitations import open_wave
from surveys.outbox import enqueue
from tests.support.send_window import daytime_zone
from tests.support.smtp_server import FakeSmtp
from tests.support.web import make_app

NOW = dt.datetime.now(dt.UTC)
MANAGERS = 30
MAIL_FROM = "surveys@carepulse.example.org"
SELF_REPORT = [("manager_self_report", {"roles": ["manager"]}, "email")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _queued_invitations(session, factory) -> list[Person]:
    """Thirty managers in ten homes, each with a self-report invitation email queued."""
    homes = [factory.home() for _ in range(10)]
    managers = [factory.person(homes[i % 10], role="manager") for i in range(MANAGERS)]
    programme, wave = factory.programme(
        homes, SELF_REPORT, opens=NOW - dt.timedelta(days=1), closes=NOW + dt.timedelta(days=7)
    )
    programme.timezone = daytime_zone(NOW)
    open_wave(session, wave, NOW)
    for invitation in session.scalars(select(Invitation)):
        enqueue(session, invitation, "invitation", not_before=NOW)
    session.commit()
    return managers


def _outbound(database_url: str, tmp_path, port: int) -> Outbound:
    app = make_app(
        database_url, tmp_path, SMTP_HOST="127.0.0.1", SMTP_PORT=str(port), MAIL_FROM=MAIL_FROM
    )
    settings = app.config["CAREPULSE"]
    # Two quick tries inside each send; the outbox's backoff does the longer waiting.
    return Outbound(settings, DevPhone(), SmtpMail(settings, attempts=2, base_delay=0.01))


def _failed_attempts(sessions) -> int:
    with sessions() as session:
        return session.scalar(
            select(func.count()).select_from(Message).where(Message.status == "error")
        )


def _unsent(sessions) -> int:
    with sessions() as session:
        return session.scalar(
            select(func.count()).select_from(OutboxItem).where(OutboxItem.status != "sent")
        )


def test_invitations_sent_across_a_mail_server_outage_arrive_once(
    session, factory, engine, database_url, tmp_path
):
    managers = _queued_invitations(session, factory)
    port = _free_port()
    outbound = _outbound(database_url, tmp_path, port)
    sessions = storage_db.make_sessionmaker(engine)
    backoff = Backoff(base=dt.timedelta(seconds=0.2), cap=dt.timedelta(seconds=1))
    stop, total = threading.Event(), DispatchReport()

    def dispatcher() -> None:
        # Paced at 20 a second, so the outage falls in the middle of the wave of emails.
        pacer = Pacer(20)
        while not stop.is_set():
            report = dispatch_once(
                sessions, outbound, utcnow(), "smtp-fault", pacer=pacer, backoff=backoff
            )
            total.merge(report)
            if report.claimed == 0:
                stop.wait(0.05)

    first = FakeSmtp(port=port).start()
    second = None
    thread = threading.Thread(target=dispatcher)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(first.messages) < 8:
            assert time.monotonic() < deadline, "the first emails never arrived"
            time.sleep(0.02)
        first.stop()
        # Down until several sends have failed for good (each after its two tries), however
        # slowly the machine runs: the outage must be met, not merely scheduled.
        deadline = time.monotonic() + 30
        while _failed_attempts(sessions) < 10:
            assert time.monotonic() < deadline, "no send failed while the server was down"
            time.sleep(0.05)
        second = FakeSmtp(port=port).start()
        deadline = time.monotonic() + 60
        while _unsent(sessions):
            assert time.monotonic() < deadline, f"{_unsent(sessions)} emails still unsent"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(timeout=30)
        if second is not None:
            second.stop()
    assert not thread.is_alive()

    received = first.messages + second.messages
    assert len(first.messages) < MANAGERS, "everything went before the outage"
    per_address = Counter(m["To"] for m in received)
    twice = {a: n for a, n in per_address.items() if n > 1}
    assert per_address == Counter(m.email for m in managers), twice  # each exactly once
    # A session of its own: nothing the test's session loaded earlier can be stale.
    with sessions() as fresh:
        rows = fresh.scalars(select(OutboxItem)).all()
        assert {r.status for r in rows} == {"sent"}
        retried = [r for r in rows if r.attempts > 1]
        assert retried, "no send met the outage"
        # Every failed attempt is on record: one stored email each, with the server's error.
        failures = fresh.scalars(select(Message).where(Message.status == "error")).all()
        assert len(failures) == sum(r.attempts - 1 for r in rows) == total.retried
        # Refused connections ("connect"), or a 421 from a server shutting down mid-session.
        codes = Counter(m.error_code for m in failures)
        assert all(c == "connect" or c.startswith("4") for c in codes), codes
        delivered = fresh.scalars(select(Message).where(Message.status == "sent")).all()
        assert sorted(m.provider_id for m in delivered) == sorted(m["Message-ID"] for m in received)
        assert {i.status for i in fresh.scalars(select(Invitation))} == {"sent"}
        print(f"{len(retried)} invitations retried, {len(failures)} failed attempts recorded")
