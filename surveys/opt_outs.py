"""Opting out and back in: a STOP stops every future message to that address at once."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Invitation, OptOut, Person, utcnow
from storage.privacy import opt_out_addresses
from surveys.invitations import set_status

_OPEN = ("pending", "sent", "delivered", "started")


def is_opted_out(session: Session, channel: str, address: str) -> bool:
    """Whether `address` has opted out of `channel` and not opted back in."""
    return (
        session.scalar(
            select(OptOut.id)
            .where(
                OptOut.channel == channel,
                OptOut.address.in_(opt_out_addresses(session, channel, address)),
                OptOut.revoked_at.is_(None),
            )
            .limit(1)
        )
        is not None
    )


def opt_out(
    session: Session,
    channel: str,
    address: str,
    keyword: str,
    person: Person | None,
    now: dt.datetime | None = None,
) -> int:
    """Record an opt-out and close the person's open invitations on that channel.

    Returns how many invitations were marked `opted_out`.
    """
    now = now or utcnow()
    row = session.scalar(select(OptOut).where(OptOut.channel == channel, OptOut.address == address))
    if row is None:
        session.add(
            OptOut(
                channel=channel,
                address=address,
                keyword=keyword,
                person_id=person.id if person else None,
                created_at=now,
            )
        )
    elif row.revoked_at is not None:
        row.revoked_at, row.keyword, row.created_at = None, keyword, now
    closed = 0
    if person is not None:
        invitations = session.scalars(
            select(Invitation).where(
                Invitation.person_id == person.id,
                Invitation.channel == channel,
                Invitation.status.in_(_OPEN),
            )
        )
        for invitation in invitations:
            closed += set_status(invitation, "opted_out", now, detail=f"{keyword} by {channel}")
    session.flush()
    return closed


def opt_in(session: Session, channel: str, address: str, now: dt.datetime | None = None) -> bool:
    """Lift an opt-out (START); True when there was one to lift."""
    rows = session.scalars(
        select(OptOut).where(
            OptOut.channel == channel,
            OptOut.address.in_(opt_out_addresses(session, channel, address)),
            OptOut.revoked_at.is_(None),
        )
    ).all()
    for row in rows:
        row.revoked_at = now or utcnow()
    session.flush()
    return bool(rows)
