"""The outbox dispatcher: sends queued messages (`storage.models.OutboxItem`) exactly once.

How a row travels:

1. `claim` takes due rows (`queued`, `not_before <= now`), oldest first, marks them
   `sending` with `claimed_at`/`claimed_by` and one more attempt, and COMMITS, before any
   provider is called. On PostgreSQL the rows are picked with `SELECT ... FOR UPDATE SKIP
   LOCKED`, so any number of dispatchers share the queue without waiting on each other or
   taking the same row. On SQLite run one dispatcher at a time (one thread): its write lock
   serialises every claim anyway, and the claim's `UPDATE ... WHERE status = 'queued'`
   still never hands one row to two claimers.
2. For each claimed row (one transaction per row): a row the invitation no longer wants is
   `cancelled`; outside the programme's send window it goes back to `queued` for the
   window's next opening (no attempt counted); otherwise `Outbound.send_invitation` (or
   `send_reminder`) stores the Message and calls the transport. The dispatcher wraps the
   transports so that, just before the provider is called, the stored Message is linked to
   the row (`message_id`) and COMMITTED: from then on a crash leaves a `sending` row whose
   message can be looked up at the provider, never a silent resend.
3. The outcome is committed with the row: `sent`; back to `queued` with exponential backoff
   and full jitter for a transient failure (429, 5xx, timeouts, SMTP 4xx), `failed` after
   `MAX_ATTEMPTS`; `failed` for a permanent refusal; deferred 30 minutes when the person is
   in another SMS conversation.
4. `reconcile` looks at rows left `sending` by a dispatcher that died: never sent (no
   message yet) -> `queued`; SMS through Twilio -> asks Twilio whether it has the message
   (yes: `sent`; no: `queued`); email and the development transports cannot be asked ->
   `reconcile`, for a person to decide (`carepulse outbox review` / `outbox resolve`).

Pacing: a token bucket per sender (`SEND_RATE_PER_SECOND` per dispatcher process), so that
a big wave does not meet Twilio's 429 in bulk. Concurrency: a pool of threads in one
dispatcher, each with its own session, sharing the transports (one Twilio client, one
HTTP connection pool) to overlap network waits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import math
import os
import queue
import random
import secrets
import signal
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, case, exists, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, aliased, joinedload, sessionmaker

from bot.outbound import Outbound
from bot.transports import EmailTransport, SendResult, SmsTransport, TwilioSms
from storage.models import Invitation, Message, OutboxItem, utcnow
from storage.vocabulary import OUTBOX_PURPOSES
from surveys.delivery import apply_delivery_report
from surveys.invitations import set_status
from surveys.schedule import SendWindow
from surveys.sms_inbox import conversations_of

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
"""Provider calls for one row before a transient failure becomes `failed`."""
BACKOFF_BASE = dt.timedelta(seconds=30)
BACKOFF_CAP = dt.timedelta(hours=1)
CONVERSATION_DEFER = dt.timedelta(minutes=30)
"""How long a message waits when its person is in another SMS conversation."""
IN_FLIGHT_DEFER = dt.timedelta(seconds=30)
"""How long a text waits while another text to the same person is at the provider."""
STALE_AFTER = dt.timedelta(minutes=10)
"""A `sending` row older than this, whose dispatcher is gone, is reconciled."""
RECONCILE_EVERY_SECONDS = 60.0
LOOKBACK = dt.timedelta(minutes=1)
"""Provider messages this long before the claim still count as the claimed one (clock skew)."""
TWILIO_LOOKUP_LIMIT = 200
BATCH_LIMIT = 100

FINAL_INVITATION = ("completed", "opted_out", "failed", "expired")
_LIVE_CONVERSATION = ("sent", "delivered", "started")

# PostgreSQL advisory-lock namespaces (the first key of the two-key form).
_LOCK_WORKER = 0x43500001
_LOCK_PERSON = 0x43500002


# --------------------------------------------------------------------------- reports


@dataclass
class DispatchReport:
    """What one or more dispatch passes did with the rows they claimed."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0
    cancelled: int = 0
    deferred: int = 0
    in_doubt: int = 0
    released: int = 0
    skipped: int = 0

    def count(self, outcome: str) -> None:
        """Add one row with this outcome (a field name)."""
        setattr(self, outcome, getattr(self, outcome) + 1)

    def merge(self, other: DispatchReport) -> None:
        """Add another report's counts to this one."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        """One line for the CLI."""
        return ", ".join(f"{f.name}: {getattr(self, f.name)}" for f in dataclasses.fields(self))


@dataclass
class ReconcileReport:
    """What reconciling rows left `sending` did."""

    sent: int = 0
    requeued: int = 0
    reconcile: int = 0
    skipped: int = 0

    def summary(self) -> str:
        """One line for the CLI."""
        return (
            f"reconciled: {self.sent} found sent, {self.requeued} requeued, "
            f"{self.reconcile} left for a person, {self.skipped} skipped"
        )


# --------------------------------------------------------------------------- pacing


class TokenBucket:
    """`rate` tokens a second, up to `capacity` saved; thread-safe.

    `reserve` takes a token now and says how long the caller must wait for it: tokens may
    go negative, so concurrent callers queue up behind each other instead of all waking at
    once. The clock and sleep are injectable so tests compute waits without waiting.
    """

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self.clock, self.sleep = clock, sleep
        self.tokens = self.capacity
        self.updated = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; the seconds to wait before using it (0 when one was saved)."""
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            self.tokens -= 1
            return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def acquire(self) -> float:
        """Take one token, sleeping as long as needed; returns the seconds slept."""
        wait = self.reserve()
        if wait > 0:
            self.sleep(wait)
        return wait


class Pacer:
    """One token bucket per sender; `rate <= 0` switches pacing off."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate, self.clock, self.sleep = rate, clock, sleep
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def wait(self, sender: str) -> float:
        """Wait for the sender's next slot; the seconds waited."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            bucket = self._buckets.get(sender)
            if bucket is None:
                bucket = TokenBucket(self.rate, clock=self.clock, sleep=self.sleep)
                self._buckets[sender] = bucket
        return bucket.acquire()


# --------------------------------------------------------------------------- backoff


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""

    base: dt.timedelta = BACKOFF_BASE
    cap: dt.timedelta = BACKOFF_CAP
    max_attempts: int = MAX_ATTEMPTS
    floor: dt.timedelta = dt.timedelta(seconds=1)

    def delay(self, attempt: int, rng: random.Random | None = None) -> dt.timedelta:
        """How long to wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.cap.total_seconds(), self.base.total_seconds() * 2 ** (attempt - 1))
        seconds = (rng or random).uniform(0, ceiling)
        return max(dt.timedelta(seconds=seconds), min(self.floor, self.base))


# --------------------------------------------------------------------------- claiming


def claim(
    session: Session,
    worker_id: str,
    now: dt.datetime,
    limit: int,
    purposes: tuple[str, ...] = OUTBOX_PURPOSES,
) -> list[OutboxItem]:
    """Claim up to `limit` due rows for `worker_id` and COMMIT; returns them, oldest first.

    Claimed rows are `sending` with `claimed_at=now`, `claimed_by=worker_id`, one more
    attempt and no message yet. PostgreSQL skips rows other dispatchers hold; the UPDATE's
    `status = 'queued'` condition makes a row claimed twice impossible on any backend.
    """
    due = (
        select(OutboxItem.id)
        .where(
            OutboxItem.status == "queued",
            OutboxItem.not_before <= now,
            OutboxItem.purpose.in_(purposes),
        )
        .order_by(OutboxItem.not_before, OutboxItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(session.scalars(due))
    if not ids:
        session.commit()
        return []
    claimed = session.scalars(
        update(OutboxItem)
        .where(OutboxItem.id.in_(ids), OutboxItem.status == "queued")
        .values(
            status="sending",
            claimed_at=now,
            claimed_by=worker_id,
            attempts=OutboxItem.attempts + 1,
            message_id=None,
            updated_at=now,
        )
        .returning(OutboxItem),
        execution_options={"populate_existing": True, "synchronize_session": False},
    ).all()
    session.commit()
    order = {row_id: i for i, row_id in enumerate(ids)}
    return sorted(claimed, key=lambda row: order[row.id])


# --------------------------------------------------------------------------- the journal


class _Journal:
    """Commits the row's stored Message, linked to the row, just before the provider call.

    One per worker thread: `begin` names the row and session the next send belongs to.
    After the commit it waits for the sender's pacing slot (holding no database locks).
    """

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self.session: Session | None = None
        self.row: OutboxItem | None = None

    def begin(self, session: Session, row: OutboxItem) -> None:
        self.session, self.row = session, row

    def end(self) -> None:
        self.session = self.row = None

    def before_send(self, sender: str, channel: str, to: str) -> None:
        session, row = self.session, self.row
        if session is not None and row is not None:
            message = _stored_message(session, row.invitation_id, channel, to)
            row.message_id = message.id if message is not None else None
            session.commit()
        self.pacer.wait(sender)


def _stored_message(session: Session, invitation_id: int, channel: str, to: str) -> Message | None:
    """The message Outbound has just stored (flushed, not yet sent) for this invitation."""

    def unsent(m: object) -> bool:
        return (
            isinstance(m, Message)
            and m.invitation_id == invitation_id
            and m.direction == "out"
            and m.channel == channel
            and m.to_address == to
            and m.provider_id is None
            and m.status == "queued"
        )

    # It is in the session (found without a query); the query is the fallback.
    candidates = [m for m in session.identity_map.values() if unsent(m)]
    if candidates:
        return max(candidates, key=lambda m: m.id)
    return session.scalar(
        select(Message)
        .where(
            Message.invitation_id == invitation_id,
            Message.direction == "out",
            Message.channel == channel,
            Message.to_address == to,
            Message.provider_id.is_(None),
            Message.status == "queued",
        )
        .order_by(Message.id.desc())
        .limit(1)
    )


class _JournaledSms:
    """An SMS transport that journals (commit, pace) before handing the text on."""

    def __init__(self, inner: SmsTransport, journal: _Journal) -> None:
        self.inner, self.journal, self.name = inner, journal, inner.name

    def send_sms(self, to: str, body: str) -> SendResult:
        self.journal.before_send(f"sms:{self.name}", "sms", to)
        return self.inner.send_sms(to, body)


class _JournaledEmail:
    """An email transport that journals (commit, pace) before handing the email on."""

    def __init__(self, inner: EmailTransport, journal: _Journal) -> None:
        self.inner, self.journal, self.name = inner, journal, inner.name

    def send_email(
        self,
        to: str,
        subject: str,
        body: str,
        html: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> SendResult:
        self.journal.before_send(f"email:{self.name}", "email", to)
        return self.inner.send_email(to, subject, body, html=html, headers=headers)


@dataclass
class _Worker:
    """What one dispatching thread needs: its journaled Outbound and the policies."""

    outbound: Outbound
    journal: _Journal
    worker_id: str
    backoff: Backoff
    rng: random.Random
    pinned: dict[tuple[type, Any], Any] = field(default_factory=dict)

    def pin(self, *objects: Any) -> None:
        """Keep these rows in the session's (weak) identity map for the rest of the batch:
        every row of a wave shares them, so they are read once, not once per message."""
        for obj in objects:
            self.pinned[(type(obj), getattr(obj, "id", id(obj)))] = obj

    @classmethod
    def make(
        cls, outbound: Outbound, pacer: Pacer, worker_id: str, backoff: Backoff, rng: Any
    ) -> _Worker:
        journal = _Journal(pacer)
        journaled = dataclasses.replace(
            outbound,
            sms=_JournaledSms(outbound.sms, journal),
            email=_JournaledEmail(outbound.email, journal),
        )
        return cls(journaled, journal, worker_id, backoff, rng)


# --------------------------------------------------------------------------- one row


def _defer(row: OutboxItem, until: dt.datetime, now: dt.datetime, why: str) -> str:
    """Back to `queued` until `until`; the claim's attempt is given back."""
    row.status, row.not_before, row.updated_at = "queued", until, now
    row.attempts = max(0, row.attempts - 1)
    row.last_error = why
    return "deferred"


def _close(row: OutboxItem, status: str, why: str | None, now: dt.datetime) -> str:
    row.status, row.updated_at = status, now
    if why is not None:
        row.last_error = why
    return {"sent": "sent", "failed": "failed", "cancelled": "cancelled"}[status]


def _unwanted(row: OutboxItem, invitation: Invitation, now: dt.datetime) -> str | None:
    """Why the invitation no longer wants this message, or None when it still does."""
    if invitation.status in FINAL_INVITATION:
        return f"invitation {invitation.status}"
    if now >= invitation.wave.closes_at:
        return "wave closed"
    if row.purpose == "invitation" and invitation.status != "pending":
        return f"invitation already {invitation.status}"
    return None


_OTHER_INVITATION = aliased(Invitation, name="other_invitation")


def _in_flight(row: OutboxItem) -> Any:
    """Whether another text to the invitation's person is at the provider right now.

    Correlated with the `Invitation` of the enclosing query; "at the provider" is a row
    `sending` whose message is journaled.
    """
    other = _OTHER_INVITATION
    return exists(
        select(OutboxItem.id)
        .join(other, OutboxItem.invitation_id == other.id)
        .where(
            other.person_id == Invitation.person_id,
            OutboxItem.channel == "sms",
            OutboxItem.status == "sending",
            OutboxItem.message_id.is_not(None),
            OutboxItem.id != row.id,
        )
    )


def _send(
    session: Session, row: OutboxItem, invitation: Invitation, worker: _Worker, now: dt.datetime
) -> Message | None | str:
    """Hand the row to Outbound; a string outcome when it cannot be sent by this code."""
    worker.journal.begin(session, row)
    try:
        if row.purpose == "invitation":
            return worker.outbound.send_invitation(session, invitation, now)
        send_reminder = getattr(worker.outbound, "send_reminder", None)
        if send_reminder is None:  # not written yet: leave the reminder for a later version
            return _defer(row, now + CONVERSATION_DEFER, now, "reminders are not implemented yet")
        return send_reminder(session, invitation, row.reminder_number, now)
    finally:
        worker.journal.end()


def _outcome(
    session: Session,
    row: OutboxItem,
    invitation: Invitation,
    message: Message | None,
    worker: _Worker,
    now: dt.datetime,
) -> str:
    """Record what the provider said on the row."""
    if message is None:
        if invitation.status in FINAL_INVITATION:
            return _close(row, "cancelled", f"invitation {invitation.status}", now)
        live = conversations_of(session, invitation.person, now, _LIVE_CONVERSATION)
        if any(other.id != invitation.id for other in live):
            return _defer(row, now + CONVERSATION_DEFER, now, "person is in another conversation")
        return _close(row, "cancelled", "nothing to send", now)
    row.message_id = message.id
    error = f"{message.error_code}: {message.error_message}"
    if message.status == "failed":
        return _close(row, "failed", error, now)
    if message.status != "error":
        row.last_error = None
        return _close(row, "sent", None, now)
    if row.attempts >= worker.backoff.max_attempts:
        if row.purpose == "invitation":
            set_status(invitation, "failed", now, detail=f"gave up after {row.attempts}: {error}")
        return _close(row, "failed", f"gave up after {row.attempts} attempts: {error}", now)
    row.status, row.last_error, row.updated_at = "queued", error, now
    row.not_before = now + worker.backoff.delay(row.attempts, worker.rng)
    return "retried"


def _dispatch_row(session: Session, row: OutboxItem, worker: _Worker, now: dt.datetime) -> str:
    """Decide and send one claimed row (the caller commits); its outcome."""
    invitation, busy = session.execute(
        select(Invitation, _in_flight(row))
        .options(joinedload(Invitation.person))
        .where(Invitation.id == row.invitation_id)
        .execution_options(populate_existing=True)
    ).one()
    wave = invitation.wave
    programme = wave.cohort.programme
    worker.pin(wave, wave.cohort, programme, invitation.person.care_home, *wave.instruments)
    reason = _unwanted(row, invitation, now)
    if reason is not None:
        return _close(row, "cancelled", reason, now)
    window = SendWindow.of(programme.settings, programme.timezone)
    if not window.contains(now):
        return _defer(row, window.next_opening(now), now, "outside the send window")
    if now < invitation.wave.opens_at:
        return _defer(row, invitation.wave.opens_at, now, "wave not open yet")
    if row.channel == "sms" and busy:
        return _defer(row, now + IN_FLIGHT_DEFER, now, "another text to this person in flight")
    sent = _send(session, row, invitation, worker, now)
    if isinstance(sent, str):
        return sent
    return _outcome(session, row, invitation, sent, worker, now)


def _claimed_row(session: Session, row_id: int, worker_id: str) -> OutboxItem | None:
    """The row, locked, if it is still ours to send.

    On PostgreSQL a text's row also takes its person's advisory lock, held until the
    journal commits: a second dispatcher with a text for the same person then waits, and
    its next statement (a new snapshot) sees the first one's text in flight, or its
    conversation live.
    """
    ours = (
        OutboxItem.id == row_id,
        OutboxItem.status == "sending",
        OutboxItem.claimed_by == worker_id,
    )
    if session.get_bind().dialect.name != "postgresql":
        query = select(OutboxItem).where(*ours)
    else:
        lock = func.pg_advisory_xact_lock(_LOCK_PERSON, Invitation.person_id)
        query = (
            select(OutboxItem)
            .join(Invitation, OutboxItem.invitation_id == Invitation.id)
            .where(*ours, case((OutboxItem.channel == "sms", lock.is_not(None)), else_=True))
        )
    return session.scalar(
        query.with_for_update(of=OutboxItem).execution_options(populate_existing=True)
    )


def _process(session: Session, row_id: int, worker: _Worker, now: dt.datetime) -> str:
    """One row in its own transaction(s); commits; returns the outcome's name."""
    row = _claimed_row(session, row_id, worker.worker_id)
    if row is None:  # reconciled away from us meanwhile
        session.rollback()
        return "skipped"
    try:
        outcome = _dispatch_row(session, row, worker, now)
        session.commit()
        return outcome
    except Exception as exc:  # a bug or a database error: never lose or double the row
        log.exception("outbox row %s: dispatch failed", row_id)
        session.rollback()
        return _after_error(session, row_id, worker, now, exc)


def _after_error(
    session: Session, row_id: int, worker: _Worker, now: dt.datetime, exc: Exception
) -> str:
    """After an unexpected error: retry a row that never reached the provider, else leave
    it `sending` for `reconcile` (its message may have gone)."""
    row = session.get(OutboxItem, row_id, with_for_update=True, populate_existing=True)
    if row is None or row.status != "sending" or row.claimed_by != worker.worker_id:
        session.rollback()
        return "skipped"
    if row.message_id is not None:
        session.rollback()
        return "in_doubt"
    row.status, row.updated_at = "queued", now
    row.last_error = f"{exc.__class__.__name__}: {exc}"[:2000]
    row.not_before = now + worker.backoff.delay(row.attempts, worker.rng)
    session.commit()
    return "retried"


def release(session: Session, row_ids: list[int], worker_id: str, now: dt.datetime) -> int:
    """Give claimed rows back (`queued`, attempt returned) that this worker will not send."""
    if not row_ids:
        return 0
    result = session.execute(
        update(OutboxItem)
        .where(
            OutboxItem.id.in_(row_ids),
            OutboxItem.status == "sending",
            OutboxItem.claimed_by == worker_id,
            OutboxItem.message_id.is_(None),
        )
        .values(status="queued", attempts=OutboxItem.attempts - 1, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    return int(getattr(result, "rowcount", 0) or 0)


# --------------------------------------------------------------------------- a pass


def default_worker_id() -> str:
    """host-pid-random: unique per process, even when a pid is reused after a crash."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


def default_threads(dialect: str) -> int:
    """Threads per dispatcher: 4 on PostgreSQL, 1 on SQLite (its writes are serialised)."""
    return 4 if dialect == "postgresql" else 1


def _drain(
    factory: _Factory,
    ids: queue.SimpleQueue[int],
    worker: _Worker,
    now: dt.datetime,
    stop: threading.Event | None,
) -> DispatchReport:
    """One thread: take row ids from the shared queue until it is empty or `stop` is set."""
    report = DispatchReport()
    with factory() as session:
        while stop is None or not stop.is_set():
            try:
                row_id = ids.get_nowait()
            except queue.Empty:
                break
            report.count(_process(session, row_id, worker, now))
    return report


def dispatch_once(
    sessions: sessionmaker[Session] | Session,
    outbound: Outbound,
    now: dt.datetime | None = None,
    worker_id: str | None = None,
    limit: int = BATCH_LIMIT,
    *,
    threads: int | None = None,
    pacer: Pacer | None = None,
    backoff: Backoff | None = None,
    rng: random.Random | None = None,
    stop_event: threading.Event | None = None,
) -> DispatchReport:
    """Claim up to `limit` due rows and send them; the counts of what happened.

    `sessions` is a session factory (each thread gets its own session) or one Session
    (then one thread). `threads` defaults to 4 on PostgreSQL and 1 on SQLite. `pacer`
    defaults to `SEND_RATE_PER_SECOND` from the outbound's settings. When `stop_event` is
    set, the message in hand is finished and the rest are given back to the queue.
    """
    now = now or utcnow()
    worker_id = worker_id or default_worker_id()
    pacer = pacer or Pacer(outbound.settings.send_rate)
    factory = _factory_of(sessions)
    if isinstance(sessions, Session):
        threads = 1
    purposes = OUTBOX_PURPOSES if hasattr(outbound, "send_reminder") else ("invitation",)
    with factory() as session:
        dialect = session.get_bind().dialect.name
        rows = claim(session, worker_id, now, limit, purposes)
    if not rows:
        return DispatchReport()
    ids: queue.SimpleQueue[int] = queue.SimpleQueue()
    for row in rows:
        ids.put(row.id)
    count = max(1, min(threads or default_threads(dialect), len(rows)))
    if dialect == "sqlite":
        count = 1  # one writer at a time: more threads would only meet SQLITE_BUSY
    workers = [
        _Worker.make(outbound, pacer, worker_id, backoff or Backoff(), rng or random.Random())
        for _ in range(count)
    ]
    report = _run_workers(factory, ids, workers, now, stop_event)
    report.claimed = len(rows)
    left = _left_over(ids)
    if left:
        with factory() as session:
            report.released += release(session, left, worker_id, now)
    return report


_Factory = Callable[[], contextlib.AbstractContextManager[Session]]


def _factory_of(sessions: sessionmaker[Session] | Session) -> _Factory:
    """Sessions to use: the factory itself, or the one given Session (never closed here)."""
    if isinstance(sessions, Session):
        given = sessions
        return lambda: contextlib.nullcontext(given)
    return sessions


def _run_workers(
    factory: _Factory,
    ids: queue.SimpleQueue[int],
    workers: list[_Worker],
    now: dt.datetime,
    stop: threading.Event | None,
) -> DispatchReport:
    """Drain the queue of row ids with one thread per worker (no pool for one)."""
    report = DispatchReport()
    if len(workers) == 1:
        report.merge(_drain(factory, ids, workers[0], now, stop))
        return report
    with _pool(len(workers)) as pool:
        futures = [pool.submit(_drain, factory, ids, w, now, stop) for w in workers]
        for future in futures:
            report.merge(future.result())
    return report


@contextlib.contextmanager
def _pool(count: int) -> Iterator[Any]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=count, thread_name_prefix="dispatch") as pool:
        yield pool


def _left_over(ids: queue.SimpleQueue[int]) -> list[int]:
    left = []
    while True:
        try:
            left.append(ids.get_nowait())
        except queue.Empty:
            return left


# --------------------------------------------------------------------------- reconcile


def _worker_key(worker_id: str) -> int:
    """A worker id as a signed 32-bit advisory-lock key."""
    value = zlib.crc32(worker_id.encode("utf-8"))
    return value - (1 << 32) if value >= 1 << 31 else value


@contextlib.contextmanager
def worker_lease(engine: Engine, worker_id: str) -> Iterator[None]:
    """While inside, PostgreSQL knows `worker_id` is alive (a session advisory lock).

    `reconcile` leaves alone the rows of a worker that holds its lease, however old their
    claim: only a dead dispatcher's rows are reconciled. A no-op on SQLite.
    """
    if engine.dialect.name != "postgresql":
        yield
        return
    key = _worker_key(worker_id)
    connection = engine.connect()
    try:
        got = connection.scalar(select(func.pg_try_advisory_lock(_LOCK_WORKER, key)))
        connection.commit()
        if not got:
            raise RuntimeError(f"worker id {worker_id!r} is in use by a running dispatcher")
        yield
    finally:
        with contextlib.suppress(SQLAlchemyError):
            connection.scalar(select(func.pg_advisory_unlock(_LOCK_WORKER, key)))
            connection.commit()
        connection.close()


def _claimer_alive(session: Session, worker_id: str | None, own_id: str | None) -> bool:
    """Whether the dispatcher that claimed a row still holds its lease (PostgreSQL only)."""
    if worker_id is None or worker_id == own_id:
        return False
    if session.get_bind().dialect.name != "postgresql":
        return False
    key = _worker_key(worker_id)
    free = session.scalar(select(func.pg_try_advisory_xact_lock(_LOCK_WORKER, key)))
    return not free


def _twilio_find(sms: SmsTransport, message: Message, since: dt.datetime) -> tuple[str, str] | None:
    """(sid, status) of a text Twilio has to the message's number with its body, since then.

    Lists by `To` only and filters on DateCreated here: a message still queued at Twilio
    has no DateSent yet, so a DateSent filter could miss exactly the one in doubt.
    """
    assert isinstance(sms, TwilioSms)
    found = sms.client.messages.list(
        to=message.to_address, limit=TWILIO_LOOKUP_LIMIT, page_size=TWILIO_LOOKUP_LIMIT
    )
    matches = [
        m
        for m in found
        if m.body == message.body
        and m.date_created is not None
        and m.date_created >= since
        and (m.direction or "").startswith("outbound")
    ]
    if not matches:
        return None
    first = min(matches, key=lambda m: m.date_created)
    return first.sid or "", first.status or "queued"


def _mark_found(
    session: Session, row: OutboxItem, message: Message, sid: str, status: str, now: dt.datetime
) -> None:
    """The provider has the message: record its id and status, and the row as sent."""
    known = session.scalar(
        select(Message).where(Message.channel == message.channel, Message.provider_id == sid)
    )
    if known is None:
        message.provider_id, message.status, message.updated_at = sid, "queued", now
        if message.invitation is not None:
            set_status(message.invitation, "sent", now)
        session.flush()
        apply_delivery_report(session, sid, status, now=now)
    row.status, row.updated_at = "sent", now
    row.last_error = "found at the provider by reconcile"


def _reconcile_row(session: Session, row: OutboxItem, outbound: Outbound, now: dt.datetime) -> str:
    """Settle one row left `sending`: `sent`, `requeued`, `reconcile` or `skipped`."""
    message = session.get(Message, row.message_id) if row.message_id else None
    if message is None or message.status != "queued" or message.provider_id:
        if message is not None and message.provider_id:
            row.status, row.updated_at = "sent", now
            return "sent"
        row.status, row.not_before, row.updated_at = "queued", now, now
        row.attempts = max(0, row.attempts - 1)
        row.last_error = "requeued by reconcile: the dispatcher stopped before sending"
        return "requeued"
    sms = outbound.sms
    if message.channel == "sms" and isinstance(sms, TwilioSms):
        since = (row.claimed_at or now) - LOOKBACK
        try:
            found = _twilio_find(sms, message, since)
        except Exception as exc:  # Twilio unreachable: ask again next time
            log.warning("reconcile: Twilio lookup for outbox row %s failed: %s", row.id, exc)
            return "skipped"
        if found is not None:
            _mark_found(session, row, message, *found, now)
            return "sent"
        message.status, message.updated_at = "error", now
        message.error_message = "not at Twilio after a dispatcher stopped: sent again"
        row.status, row.not_before, row.updated_at = "queued", now, now
        row.last_error = "requeued by reconcile: Twilio has no such message"
        return "requeued"
    row.status, row.updated_at = "reconcile", now
    row.last_error = (
        f"in doubt: the dispatcher stopped while {message.channel} went to "
        f"{outbound.sms.name if message.channel == 'sms' else outbound.email.name}, which "
        "cannot be asked; decide with `carepulse outbox resolve`"
    )
    return "reconcile"


def reconcile(
    session: Session,
    outbound: Outbound,
    now: dt.datetime | None = None,
    stale_after: dt.timedelta = STALE_AFTER,
    *,
    own_worker_id: str | None = None,
) -> ReconcileReport:
    """Settle rows left `sending` longer than `stale_after` by a dispatcher that is gone.

    Never resends blindly: a row with no message yet is requeued (it never reached the
    provider); a Twilio text is looked up at Twilio (found: `sent` with its sid; not
    found: requeued); anything else becomes `reconcile` for a person to decide. One row
    per transaction. `own_worker_id`: the caller's own id, whose rows are not in flight.
    """
    now = now or utcnow()
    report = ReconcileReport()
    seen: list[int] = []
    while True:
        row = session.scalar(
            select(OutboxItem)
            .where(
                OutboxItem.status == "sending",
                OutboxItem.claimed_at <= now - stale_after,
                OutboxItem.id.not_in(seen) if seen else OutboxItem.id.is_not(None),
            )
            .order_by(OutboxItem.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
        if row is None:
            session.commit()
            return report
        seen.append(row.id)
        if _claimer_alive(session, row.claimed_by, own_worker_id):
            outcome = "skipped"
        else:
            outcome = _reconcile_row(session, row, outbound, now)
        setattr(report, outcome, getattr(report, outcome) + 1)
        session.commit()


# --------------------------------------------------------------------------- the loop


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set `stop` (the message in hand is finished), main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class DispatcherOptions:
    """Tuning for `run_dispatcher` (the defaults are production's)."""

    threads: int | None = None
    reconcile_every: float = RECONCILE_EVERY_SECONDS
    stale_after: dt.timedelta = STALE_AFTER
    backoff: Backoff = field(default_factory=Backoff)
    limit: int = BATCH_LIMIT
    once: bool = False


def run_dispatcher(
    app: Flask,
    worker_id: str | None = None,
    poll_seconds: float = 2.0,
    stop_event: threading.Event | None = None,
    options: DispatcherOptions | None = None,
) -> DispatchReport:
    """Reconcile (every minute) and dispatch until stopped; the total of what was done.

    Without a `stop_event`, SIGTERM and SIGINT stop it gracefully: the message in hand is
    finished, the rest of the batch is given back. With `options.once`, it reconciles, sends
    everything due now and returns.
    """
    from bot.db import get_engine, get_sessionmaker
    from bot.transports import make_transports

    options = options or DispatcherOptions()
    worker_id = worker_id or default_worker_id()
    stop = stop_event or threading.Event()
    signals = _stop_on_signals(stop) if stop_event is None else contextlib.nullcontext()
    total = DispatchReport()
    with app.app_context(), signals:
        settings = app.config["CAREPULSE"]
        outbound = Outbound(settings, *make_transports(settings))
        factory, pacer = get_sessionmaker(), Pacer(settings.send_rate)
        with worker_lease(get_engine(), worker_id):
            last_reconcile = -math.inf
            while not stop.is_set():
                if time.monotonic() - last_reconcile >= options.reconcile_every:
                    last_reconcile = time.monotonic()
                    _guarded(lambda: _reconcile_pass(factory, outbound, options, worker_id))
                report = _guarded(
                    lambda: dispatch_once(
                        factory,
                        outbound,
                        worker_id=worker_id,
                        limit=options.limit,
                        threads=options.threads,
                        pacer=pacer,
                        backoff=options.backoff,
                        stop_event=stop,
                    )
                )
                if report is not None:
                    total.merge(report)
                done = report is not None and report.claimed < options.limit
                if options.once and (done or report is None):
                    break
                if report is None or report.claimed == 0:
                    stop.wait(poll_seconds)
    return total


def _reconcile_pass(
    factory: sessionmaker[Session], outbound: Outbound, options: DispatcherOptions, worker_id: str
) -> ReconcileReport:
    with factory() as session:
        report = reconcile(
            session, outbound, utcnow(), options.stale_after, own_worker_id=worker_id
        )
    if report.sent or report.requeued or report.reconcile:
        log.warning("outbox %s", report.summary())
    return report


def _guarded(work: Callable[[], Any]) -> Any:
    """Run one pass; a database outage is logged and retried on the next poll, not fatal."""
    try:
        return work()
    except SQLAlchemyError as exc:
        log.error("dispatcher: database error, retrying: %s", exc)
        return None


# --------------------------------------------------------------------------- people decide


class ResolveError(ValueError):
    """A row cannot be resolved as asked; the message says why."""


def in_doubt(session: Session) -> list[str]:
    """One line per row in `reconcile`: what it was, to whom, when and by which dispatcher."""
    rows = session.scalars(
        select(OutboxItem).where(OutboxItem.status == "reconcile").order_by(OutboxItem.id)
    ).all()
    lines = []
    for row in rows:
        message, person = row.message, row.invitation.person
        what = f"{row.purpose}" + (f" {row.reminder_number}" if row.purpose == "reminder" else "")
        to = message.to_address if message else (person.mobile or person.email or "?")
        said = (message.subject or message.body or "") if message else ""
        claimed = f"{row.claimed_at:%Y-%m-%d %H:%M:%S}Z" if row.claimed_at else "?"
        lines.append(
            f"  {row.id}: {what} by {row.channel} to {person.full_name} <{to}>, claimed "
            f"{claimed} by {row.claimed_by}, invitation {row.invitation_id} "
            f"({row.invitation.status}): {said[:60]!r}"
        )
    return lines


def resolve(session: Session, row_id: int, decision: str, now: dt.datetime) -> str:
    """A person's decision on a row in `reconcile`: `sent`, `resend` or `cancel`.

    `sent`: it went out (the person checked, e.g. in the relay's log): the row and its
    message are sent, the invitation too. `resend`: it did not: queued to go now, the old
    message marked as never sent. `cancel`: leave it unsent. Flushes; the caller commits.
    """
    row = session.get(OutboxItem, row_id, with_for_update=True)
    if row is None:
        raise ResolveError(f"there is no outbox message {row_id}")
    if row.status != "reconcile":
        raise ResolveError(f"outbox message {row_id} is {row.status}, not in doubt")
    message = row.message
    if decision == "sent":
        if message is not None:
            message.status, message.updated_at = "sent", now
            if row.purpose == "invitation":
                set_status(row.invitation, "sent", now, detail="confirmed sent by a person")
        row.status, row.last_error = "sent", "confirmed sent by a person"
    elif decision == "resend":
        if message is not None:
            message.status, message.updated_at = "error", now
            message.error_message = "in doubt after a dispatcher stopped; sent again"
        row.status, row.not_before, row.attempts = "queued", now, max(0, row.attempts - 1)
        row.last_error = "resend decided by a person"
    elif decision == "cancel":
        if message is not None:
            message.status, message.updated_at = "error", now
            message.error_message = "in doubt after a dispatcher stopped; cancelled"
        row.status, row.last_error = "cancelled", "cancelled by a person"
    else:
        raise ResolveError(f"unknown decision {decision!r}: use sent, resend or cancel")
    row.updated_at = now
    session.flush()
    verb = {"sent": "marked sent", "resend": "queued to send again", "cancel": "cancelled"}
    return f"outbox message {row_id} {verb[decision]}"
