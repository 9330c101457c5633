"""Reminders: who is due one, which one, and when it may go out.

A wave's `reminders: {after_days: [2, 5], max: 2}` means: reminder 1 is due two days after
the invitation was *sent* (its first `sent` event), reminder 2 five days after, and never
more than `max`. Days are calendar days in the programme's time zone, so an invitation
sent at 09:00 on the Friday before the clocks change is reminded at 09:00 local time on
the Sunday (08:00 UTC in spring, 09:00 UTC in autumn), not 48 hours later.

A reminder is wanted only while the invitation is `sent`, `delivered` or `started`:
never after completion, an opt-out (STOP, unsubscribe), a failure or the wave's close.
A reminder that falls outside the sending window waits for the window's next opening.

When the clock was stopped long enough for two reminders to fall due at once, only the
later one is queued: nobody gets two reminders together, and the earlier one is never
queued afterwards (the choice depends only on the time, not on what was queued before).

Everything here is pure except :func:`due_reminders`, which reads the database.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Invitation, InvitationEvent, Wave
from surveys.schedule import SendWindow

REMINDABLE: tuple[str, ...] = ("sent", "delivered", "started")
"""Invitation statuses that still want reminders."""


@dataclass(frozen=True)
class ReminderRule:
    """A wave's reminder schedule: days after sending, and how many at most."""

    after_days: tuple[float, ...] = ()
    max: int = 0

    @classmethod
    def of(cls, reminders: Mapping[str, Any] | None) -> ReminderRule:
        """The rule from a wave's `reminders` JSON; an empty or missing one sends none."""
        reminders = reminders or {}
        days = tuple(float(d) for d in reminders.get("after_days") or () if float(d) > 0)
        most = reminders.get("max")
        most = len(days) if most is None else max(0, int(most))
        return cls(after_days=days, max=min(most, len(days)))

    def due_times(self, sent_at: dt.datetime, tz: ZoneInfo) -> list[tuple[int, dt.datetime]]:
        """(number, due time in UTC) of every reminder the rule allows, in order."""
        local = sent_at.astimezone(tz).replace(tzinfo=None)
        out = []
        for number, days in enumerate(self.after_days[: self.max], start=1):
            # Wall-clock arithmetic, then the zone: "2 days later at the same local time".
            due = (local + dt.timedelta(days=days)).replace(tzinfo=tz)
            out.append((number, due.astimezone(dt.UTC)))
        return out


def wants_reminder(status: str) -> bool:
    """Whether an invitation in `status` may still be reminded."""
    return status in REMINDABLE


def reminder_due(
    rule: ReminderRule,
    sent_at: dt.datetime,
    status: str,
    now: dt.datetime,
    closes_at: dt.datetime,
    window: SendWindow,
) -> tuple[int, dt.datetime] | None:
    """The reminder to queue now, as (number, not_before), or None.

    The latest reminder whose due time has come, if the invitation still wants one and the
    reminder can go out (at the window's next opening after its due time) before the wave
    closes.
    """
    if not wants_reminder(status):
        return None
    due = [(n, at) for n, at in rule.due_times(sent_at, window.tz) if at <= now]
    if not due:
        return None
    number, at = due[-1]
    not_before = window.next_opening(at)
    if not_before >= closes_at:
        return None
    return number, not_before


@dataclass(frozen=True)
class DueReminder:
    """A reminder to queue: which invitation, which reminder, not before when."""

    invitation: Invitation
    number: int
    not_before: dt.datetime


def due_reminders(session: Session, now: dt.datetime) -> list[DueReminder]:
    """Every reminder due at `now` for invitations of open waves (queued before or not)."""
    waves = session.scalars(
        select(Wave).where(Wave.opens_at <= now, Wave.closes_at > now).order_by(Wave.id)
    ).all()
    out: list[DueReminder] = []
    for wave in waves:
        rule = ReminderRule.of(wave.reminders)
        if not rule.max:
            continue
        programme = wave.cohort.programme
        window = SendWindow.of(programme.settings, programme.timezone)
        live = select(Invitation.id).where(
            Invitation.wave_id == wave.id, Invitation.status.in_(REMINDABLE)
        )
        first_sent = (
            select(
                InvitationEvent.invitation_id.label("invitation_id"),
                func.min(InvitationEvent.at).label("sent_at"),
            )
            .where(InvitationEvent.status == "sent", InvitationEvent.invitation_id.in_(live))
            .group_by(InvitationEvent.invitation_id)
            .subquery()
        )
        rows = session.execute(
            select(Invitation, first_sent.c.sent_at)
            .join(first_sent, first_sent.c.invitation_id == Invitation.id)
            .order_by(Invitation.id)
        ).all()
        for invitation, sent_at in rows:
            found = reminder_due(rule, sent_at, invitation.status, now, wave.closes_at, window)
            if found:
                out.append(DueReminder(invitation, *found))
    return out
