"""What is due now: opening waves, sending their invitations, expiring closed waves.

`due_work` is one tick of the clock. The scheduler process (`carepulse clock`) will run it
on a timer with quiet hours and reminders; `carepulse send-due` runs it once by hand.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.outbound import Outbound
from storage.models import Wave, utcnow
from surveys.invitations import expire_wave, open_wave


@dataclass
class TickReport:
    """What one tick did."""

    opened: int = 0
    invited: int = 0
    sent: int = 0
    expired: int = 0

    def summary(self) -> str:
        """One line for the CLI."""
        return (
            f"waves opened: {self.opened}, invitations created: {self.invited}, "
            f"sent: {self.sent}, expired: {self.expired}"
        )


def due_work(session: Session, outbound: Outbound, now: dt.datetime | None = None) -> TickReport:
    """Open waves whose time has come, send pending invitations, expire closed waves."""
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
    report.sent = outbound.send_pending(session, now)
    for wave in session.scalars(select(Wave).where(Wave.closes_at <= now)).all():
        report.expired += expire_wave(session, wave, now)
    return report
