"""The database server goes away and comes back while texts arrive and the outbox is sent.

Each test runs against a PostgreSQL server of its own (`ThrowawayPostgres`), so stopping it
does not disturb the suite's. (a) Care workers' replies come in through the signed Twilio
webhook on a live app while the server is stopped for a few seconds: every reply that
arrives during the outage is answered 5xx (Twilio then retries it), none is answered 200
without being stored, and once the retries (same MessageSid) are in, every answer is
stored exactly once. (b) A dispatcher sends a few hundred queued texts through the fake
Twilio while the server restarts: in the end each was sent exactly once, or is flagged
for a person to reconcile and counted.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session
from werkzeug.serving import make_server

from bot.dispatch import Backoff, DispatcherOptions, run_dispatcher
from storage import db as storage_db
from storage.models import Answer, Base, Invitation, Message, OutboxItem, Person, Response
from surveys.invitations import open_wave, set_status
from surveys.outbox import enqueue
from surveys.sms_inbox import opening
from tests.conftest import Factory
from tests.support.bulk import insert_care_workers, insert_pending_invitations
from tests.support.postgres_server import PostgresUnavailable, ThrowawayPostgres
from tests.support.send_window import daytime_zone
from tests.support.web import make_app, twilio_settings

pytestmark = pytest.mark.slow

NOW = dt.datetime.now(dt.UTC)
OUTAGE_SECONDS = 2.5
MORALE = [("staff_morale", {"roles": ["care_worker"]}, "sms")]


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[ThrowawayPostgres]:
    """A migrated PostgreSQL server for this module alone (PostgreSQL runs of the suite)."""
    if not os.environ.get("CAREPULSE_TEST_DATABASE_URL", "").startswith("postgresql"):
        pytest.skip(
            "restarting the database server needs PostgreSQL (SQLite has no server); "
            "runs in the PostgreSQL pass of scripts/test-suite"
        )
    try:
        server = ThrowawayPostgres().start()
    except PostgresUnavailable as exc:
        pytest.fail(f"could not start a second PostgreSQL server: {exc}")
    try:
        engine = storage_db.make_engine(server.url)
        storage_db.upgrade(engine)
        engine.dispose()
        yield server
    finally:
        server.close()


@pytest.fixture
def own_db(own_postgres: ThrowawayPostgres) -> Iterator[Session]:
    """A session on the module's server, running; every table emptied afterwards."""
    if not own_postgres.running:
        own_postgres.start()
    engine = storage_db.make_engine(own_postgres.url)
    with storage_db.make_sessionmaker(engine)() as session:
        yield session
    if not own_postgres.running:
        own_postgres.start()
    names = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()


def _app(server: ThrowawayPostgres, twilio_fake, tmp_path, port: int, **extra):
    return make_app(
        server.url,
        tmp_path,
        PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
        **twilio_settings(),
        TWILIO_API_BASE_URL=twilio_fake.base_url,
        **extra,
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _outage(server: ThrowawayPostgres, met=lambda: True) -> None:
    """Stop the server as if it crashed, and start it again a few seconds later, once the
    traffic has met the outage (`met()`), however slowly the machine runs."""
    server.stop("immediate")
    started = time.monotonic()
    _wait_for(met, 30, "traffic to meet the outage")
    time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - started)))
    server.start()


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- (a) webhooks


@dataclass
class Deliveries:
    """What Twilio saw for each inbound text: the status of every attempt, or the error."""

    attempts: dict[str, list[int | str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, sid: str, outcome: int | str) -> None:
        with self.lock:
            self.attempts.setdefault(sid, []).append(outcome)

    def answered(self) -> int:
        with self.lock:
            return sum(1 for tries in self.attempts.values() if 200 in tries)

    def refused(self) -> int:
        with self.lock:
            return sum(1 for tries in self.attempts.values() for o in tries if o != 200)


def _deliver(fake, url: str, sid: str, mobile: str, deliveries: Deliveries) -> int | str:
    """One attempt, as Twilio makes it: a connection error counts as a failure to retry."""
    try:
        outcome: int | str = fake.deliver_inbound(
            url, mobile, "4", message_sid=sid, timeout=10
        ).status_code
    except requests.RequestException as exc:
        outcome = exc.__class__.__name__
    deliveries.record(sid, outcome)
    return outcome


def _conversations(session: Session, count: int) -> list[Person]:
    """`count` care workers, each asked the morale question by text and not yet answering."""
    factory = Factory(session)
    home = factory.home("Willow Court")
    workers = [factory.person(home) for _ in range(count)]
    _, wave = factory.programme([home], MORALE, opens=NOW - dt.timedelta(hours=1))
    open_wave(session, wave, NOW)
    for invitation in session.scalars(select(Invitation)):
        opening(invitation)
        set_status(invitation, "sent", NOW)
    session.commit()
    return workers


def test_replies_during_an_outage_are_refused_then_stored_once(
    own_db, own_postgres, twilio_fake, tmp_path
):
    workers = _conversations(own_db, 40)
    port = _free_port()
    app = _app(own_postgres, twilio_fake, tmp_path, port)
    server = make_server("127.0.0.1", port, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    serving.start()
    url = f"http://127.0.0.1:{port}/twilio/sms"
    sids = {w.id: f"SM{secrets.token_hex(16)}" for w in workers}
    deliveries = Deliveries()

    def traffic() -> None:
        for worker in workers:
            _deliver(twilio_fake, url, sids[worker.id], worker.mobile, deliveries)
            time.sleep(0.1)

    sender = threading.Thread(target=traffic)
    try:
        sender.start()
        _wait_for(lambda: deliveries.answered() >= 10, 30, "the first ten replies")
        _outage(own_postgres, met=lambda: deliveries.refused() >= 3)
        sender.join(timeout=60)
        # Twilio retries every failed text with the same MessageSid until it is answered.
        for worker in workers:
            sid = sids[worker.id]
            for _ in range(10):
                if 200 in deliveries.attempts[sid]:
                    break
                time.sleep(0.2)
                _deliver(twilio_fake, url, sid, worker.mobile, deliveries)
    finally:
        server.shutdown()
        serving.join(timeout=5)
        app.extensions["carepulse.engine"].dispose()

    failed = [o for tries in deliveries.attempts.values() for o in tries if o != 200]
    assert failed, "no reply arrived during the outage: the test proved nothing"
    assert set(failed) == {503}, Counter(failed)  # "try again", never a 500 or a hang
    assert all(200 in tries for tries in deliveries.attempts.values()), deliveries.attempts
    own_db.rollback()
    stored = Counter(
        own_db.scalars(select(Message.provider_id).where(Message.direction == "in")).all()
    )
    assert stored == Counter(sids.values())  # each text once: no loss, no duplicate
    answers = own_db.execute(
        select(Invitation.person_id, Answer.value)
        .join(Response, Answer.response_id == Response.id)
        .join(Invitation, Response.invitation_id == Invitation.id)
    ).all()
    assert sorted(answers) == sorted((w.id, 4) for w in workers)
    print(f"replies refused during the outage and retried: {len(failed)}")  # pytest -s


# --------------------------------------------------------------------------- (b) dispatcher


def _queued_texts(session: Session, count: int) -> None:
    """`count` care workers with one invitation text each queued, inserted in bulk."""
    factory = Factory(session)
    home = factory.home("Bulk Home")
    programme, wave = factory.programme(
        [home], MORALE, opens=NOW - dt.timedelta(days=1), closes=NOW + dt.timedelta(days=7)
    )
    programme.timezone = daytime_zone(NOW)
    wave.opened_at = NOW
    wave.instruments[0].sms_mode = "link"  # one text each, no conversation to wait for
    session.flush()
    people = insert_care_workers(session, home.id, count, NOW)
    version = wave.instruments[0].instrument_version_id
    insert_pending_invitations(session, wave.id, version, people, NOW)
    for invitation in session.scalars(select(Invitation)):
        enqueue(session, invitation, "invitation", not_before=NOW)
    session.commit()


def _statuses(server: ThrowawayPostgres) -> Counter:
    engine = storage_db.make_engine(server.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(OutboxItem.status, func.count()).group_by(OutboxItem.status))
            return Counter(dict(rows.all()))
    finally:
        engine.dispose()


def test_a_dispatcher_sends_each_text_once_across_a_restart(
    own_db, own_postgres, twilio_fake, tmp_path
):
    total = 300
    _queued_texts(own_db, total)
    # Paced at 60 a second (the 300 take about five), so the restart falls mid-send.
    app = _app(own_postgres, twilio_fake, tmp_path, 9, SEND_RATE_PER_SECOND="60")
    options = DispatcherOptions(
        threads=4,
        reconcile_every=0.5,
        stale_after=dt.timedelta(seconds=1.5),
        backoff=Backoff(base=dt.timedelta(seconds=0.2), cap=dt.timedelta(seconds=1)),
    )
    stop = threading.Event()
    result = {}

    def dispatcher() -> None:
        result["report"] = run_dispatcher(
            app, "fault-test", poll_seconds=0.1, stop_event=stop, options=options
        )

    thread = threading.Thread(target=dispatcher)
    thread.start()
    try:
        _wait_for(lambda: len(twilio_fake.messages) >= 60, 30, "the first 60 texts")
        _outage(own_postgres)
        at_restart = len(twilio_fake.messages)
        _wait_for(
            lambda: _statuses(own_postgres)["sent"] + _statuses(own_postgres)["reconcile"] == total,
            60,
            "every text sent or flagged",
        )
    finally:
        stop.set()
        thread.join(timeout=30)
        app.extensions["carepulse.engine"].dispose()
    assert not thread.is_alive(), "the dispatcher did not stop"
    assert at_restart < total, "everything went before the outage: the test proved nothing"

    sent = twilio_fake.messages
    per_number = Counter(m["to"] for m in sent)
    assert set(per_number.values()) == {1}, [n for n, c in per_number.items() if c > 1]
    own_db.rollback()
    rows = own_db.scalars(select(OutboxItem)).all()
    flagged = [r for r in rows if r.status == "reconcile"]
    assert len(per_number) + len(flagged) == total
    stored = own_db.scalars(
        select(Message.provider_id).where(Message.direction == "out", Message.status != "error")
    ).all()
    assert sorted(s for s in stored if s) == sorted(m["sid"] for m in sent)
    report = result["report"]
    print(  # what the restart did, for the record (pytest -s)
        f"restart with {at_restart} of {total} sent; dispatcher: {report.summary()}; "
        f"found at Twilio by reconcile: "
        f"{sum(r.last_error == 'found at the provider by reconcile' for r in rows)}; "
        f"flagged for a person: {len(flagged)}"
    )
