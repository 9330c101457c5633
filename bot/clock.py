"""The clock's work: what is due now, planned into the outbox.

`tick` only plans and never calls a provider: it opens waves whose time has come (their
invitations are created for everyone eligible at that moment), queues an `invitation`
message for every pending invitation of an open wave and every reminder that has fallen
due, each not before the programme's sending window next opens, and expires the
invitations of closed waves, cancelling what they still had queued. The outbox's unique
key (invitation, purpose, number) makes queueing the same message twice a no-op, so two
clocks running by mistake, or one tick run twice, never send anything twice.

Sending is the dispatcher's job (`bot.dispatch.dispatch_once`); `due_work` is one tick
followed by one dispatch, for `carepulse send-due` and the demo.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.config import Settings
from bot.dispatch import dispatch_once
from bot.outbound import Outbound
from bot.transports import EmailTransport
from storage.models import Invitation, OutboxItem, Wave, utcnow
from surveys.invitations import expire_wave, open_wave
from surveys.outbox import enqueue
from surveys.reminders import REMINDABLE, due_reminders
from surveys.schedule import SendWindow

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

    from bot.weekly_mail import WeeklyMailReport

log = logging.getLogger(__name__)

_FINAL = ("completed", "failed", "opted_out", "expired")


@dataclass
class TickReport:
    """What one tick (and, through `due_work`, one dispatch) did."""

    opened: int = 0
    invited: int = 0
    queued: int = 0
    reminders: int = 0
    expired: int = 0
    cancelled: int = 0
    sent: int = 0

    def summary(self) -> str:
        """One line for the CLI and the clock's log."""
        return (
            f"waves opened: {self.opened}, invitations created: {self.invited}, "
            f"queued: {self.queued}, reminders queued: {self.reminders}, "
            f"sent: {self.sent}, expired: {self.expired}, cancelled: {self.cancelled}"
        )

    @property
    def busy(self) -> bool:
        """Whether the tick did anything worth logging."""
        return any(
            (self.opened, self.invited, self.queued, self.reminders, self.expired, self.cancelled)
        )


def window_of(wave: Wave) -> SendWindow:
    """The sending window of the wave's programme."""
    programme = wave.cohort.programme
    return SendWindow.of(programme.settings, programme.timezone)


def tick(session: Session, now: dt.datetime | None = None) -> TickReport:
    """Plan what is due at `now` into the outbox; flushes, the caller commits."""
    now = now or utcnow()
    report = TickReport()
    open_now = session.scalars(
        select(Wave).where(Wave.opens_at <= now, Wave.closes_at > now).order_by(Wave.opens_at)
    ).all()
    for wave in open_now:
        if wave.opened_at is None:
            report.opened += 1
        # Re-running on an open wave also invites people added to the roster since.
        report.invited += open_wave(session, wave, now).created
        not_before = window_of(wave).next_opening(now)
        pending = session.scalars(
            select(Invitation)
            .where(Invitation.wave_id == wave.id, Invitation.status == "pending")
            .order_by(Invitation.id)
        ).all()
        for invitation in pending:
            report.queued += enqueue(session, invitation, "invitation", 0, not_before)
    for due in due_reminders(session, now):
        report.reminders += enqueue(session, due.invitation, "reminder", due.number, due.not_before)
    closed = session.scalars(
        select(Wave)
        .where(
            Wave.closes_at <= now,
            Wave.id.in_(
                select(Invitation.wave_id).where(Invitation.status.not_in(_FINAL)).distinct()
            ),
        )
        .order_by(Wave.id)
    ).all()
    for wave in closed:
        report.expired += expire_wave(session, wave, now)
    report.cancelled = cancel_unwanted(session, now)
    session.flush()
    return report


def cancel_unwanted(session: Session, now: dt.datetime) -> int:
    """Cancel queued messages nobody wants any more; returns how many.

    A queued message of a closed wave, of an invitation that has ended (answered, opted
    out, failed, expired), or an invitation message whose invitation went out another way
    (a conversation started by the person's previous one ending). Rows a dispatcher has
    claimed (`sending`) are left to it.
    """
    rows = session.scalars(
        select(OutboxItem)
        .join(Invitation, OutboxItem.invitation_id == Invitation.id)
        .join(Wave, Invitation.wave_id == Wave.id)
        .where(OutboxItem.status == "queued")
        .where(
            (Wave.closes_at <= now)
            | Invitation.status.in_(_FINAL)
            | ((OutboxItem.purpose == "invitation") & (Invitation.status != "pending"))
            | ((OutboxItem.purpose == "reminder") & Invitation.status.not_in(REMINDABLE))
        )
        .order_by(OutboxItem.id)
    ).all()
    for row in rows:
        row.status, row.updated_at = "cancelled", now
    return len(rows)


def due_work(session: Session, outbound: Outbound, now: dt.datetime | None = None) -> TickReport:
    """One tick, then one dispatch of what is due: `carepulse send-due` and the demo.

    The dispatch commits (it claims rows before calling a provider), so the tick's work is
    committed with it.
    """
    now = now or utcnow()
    report = tick(session, now)
    report.sent = _count_sent(dispatch_once(session, outbound, now))
    return report


def _count_sent(result: Any) -> int:
    if isinstance(result, int):
        return result
    return int(getattr(result, "sent", 0) or 0)


# --------------------------------------------------------------------------- the process

TICK_MISFIRE_SECONDS = 50
"""A tick more than this late is skipped: the next one, a minute later, does its work."""
WEEKLY_MISFIRE_SECONDS = 3600


def run_tick(factory: Callable[[], Session]) -> TickReport | None:
    """The clock's minute job: one tick in a session of its own, committed.

    A failed tick (a clash with a second clock, a database outage) is rolled back and
    logged; the next minute's tick does the same work again.
    """
    with factory() as session:
        try:
            report = tick(session)
            session.commit()
        except Exception:
            session.rollback()
            log.exception("clock: tick failed; the next one retries")
            return None
    if report.busy:
        log.info("clock: %s", report.summary())
    return report


def run_weekly_mail(
    factory: Callable[[], Session], settings: Settings, email: EmailTransport, timezone: str
) -> list[WeeklyMailReport]:
    """The clock's Monday job for one time zone: the weekly email of each of its programmes."""
    from bot.weekly_mail import programmes_in, send_weekly_mail

    reports = []
    with factory() as session:
        for key in programmes_in(session, timezone):
            try:
                report = send_weekly_mail(session, settings, email, key, once_a_week=True)
                session.commit()
            except Exception:
                session.rollback()
                log.exception("clock: the weekly email of %s failed", key)
                continue
            log.info("clock: %s", report.summary())
            reports.append(report)
    return reports


def make_scheduler(
    factory: Callable[[], Session],
    settings: Settings,
    email: EmailTransport,
    timezones: Iterable[str],
    scheduler_class: type[BaseScheduler] | None = None,
) -> BaseScheduler:
    """The clock's APScheduler 3 scheduler (a BlockingScheduler unless told), jobs added.

    `tick` every minute; the weekly email every Monday at 08:00 in each of `timezones` (the
    programmes' zones: a CronTrigger with the zone, so 08:00 stays 08:00 across the clock
    changes). Each job runs alone (`max_instances=1`), missed runs are coalesced into one.
    """
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    from bot.privacy_commands import run_retention_purge

    scheduler = (scheduler_class or BlockingScheduler)(
        timezone="UTC",
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": TICK_MISFIRE_SECONDS,
        },
    )
    scheduler.add_job(
        run_tick,
        IntervalTrigger(minutes=1, timezone="UTC"),
        args=[factory],
        id="tick",
        name="tick",
        next_run_time=utcnow(),
    )
    for zone in sorted(set(timezones)):
        scheduler.add_job(
            run_weekly_mail,
            CronTrigger(day_of_week="mon", hour=8, minute=0, timezone=zone),
            args=[factory, settings, email, zone],
            id=f"weekly-mail {zone}",
            name=f"weekly email ({zone})",
            misfire_grace_time=WEEKLY_MISFIRE_SECONDS,
        )
    # Retention: contact details and message text go once every programme a person was in
    # has been over for its retention_days (storage.privacy.purge_expired).
    scheduler.add_job(
        run_retention_purge,
        CronTrigger(hour=3, minute=30, timezone="UTC"),
        args=[factory, settings.secret_key],
        id="retention-purge",
        name="retention purge",
        misfire_grace_time=WEEKLY_MISFIRE_SECONDS,
    )
    return scheduler
