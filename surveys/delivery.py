"""Delivery reports from the SMS provider, applied to messages and their invitations.

Reports arrive late, twice or out of order, so a message's status only ever moves forward:
a `sent` that arrives after `delivered` changes nothing.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Message, utcnow
from surveys.invitations import set_status
from surveys.opt_outs import opt_out

# Twilio's message statuses in the order a message passes through them.
_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 1,
    "sending": 2,
    "sent": 3,
    "delivered": 4,
    "undelivered": 4,
    "failed": 4,
    "read": 5,
}
_FAILED = {"undelivered", "failed"}
_OPTED_OUT_CODES = {"21610"}


def apply_delivery_report(
    session: Session,
    provider_id: str,
    status: str,
    error_code: str | None = None,
    now: dt.datetime | None = None,
) -> Message | None:
    """Record a delivery report for the message with `provider_id`; None if unknown."""
    now = now or utcnow()
    message = session.scalar(
        select(Message)
        .where(Message.channel == "sms", Message.provider_id == provider_id)
        .with_for_update()
    )
    status = status.lower()
    if message is None or status not in _RANK:
        return message
    current = _RANK.get(message.status, 0)
    final = message.status in _FAILED or message.status == "delivered"
    if _RANK[status] < current or (final and _RANK[status] <= current):
        return message  # late or repeated: never move backwards
    message.status, message.updated_at = status, now
    if error_code:
        message.error_code = error_code
    invitation = message.invitation
    if invitation is not None and message.direction == "out":
        if status == "delivered":
            set_status(invitation, "delivered", now)
        elif status in _FAILED:
            if error_code in _OPTED_OUT_CODES:
                opt_out(
                    session,
                    "sms",
                    message.to_address,
                    f"provider {error_code}",
                    invitation.person,
                    now,
                )
            elif invitation.status in ("pending", "sent", "delivered"):
                set_status(invitation, "failed", now, detail=f"{status}: {error_code or '-'}")
    session.flush()
    return message
