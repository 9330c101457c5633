"""Queueing messages to send, exactly once in effect.

`enqueue` inserts with ON CONFLICT DO NOTHING on the outbox's unique key (invitation,
purpose, reminder number), so two clocks running by mistake, or one clock re-running a
tick, can both try and only one row ever exists.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.models import Invitation, OutboxItem, utcnow


def outbox_key(invitation_id: int, purpose: str, number: int = 0) -> str:
    """The idempotency key of one message: e.g. `1234:reminder:2`."""
    return f"{invitation_id}:{purpose}:{number}"


def enqueue(
    session: Session,
    invitation: Invitation,
    purpose: str,
    number: int = 0,
    not_before: dt.datetime | None = None,
) -> bool:
    """Queue a message for an invitation; False when it was queued before (nothing changes)."""
    now = utcnow()
    values = {
        "key": outbox_key(invitation.id, purpose, number),
        "invitation_id": invitation.id,
        "purpose": purpose,
        "reminder_number": number,
        "channel": invitation.channel,
        "status": "queued",
        "not_before": not_before or now,
        "attempts": 0,
        "created_at": now,
        "updated_at": now,
    }
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (
        insert(OutboxItem)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(OutboxItem.id)
    )
    return session.execute(statement).first() is not None
