"""Rows inserted in bulk, past the app's own paths, where a test or a benchmark needs
thousands of them quickly (`open_wave` makes them one by one, with their events)."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from storage.models import Invitation


def insert_pending_invitations(
    session: Session,
    wave_id: int,
    version_id: int,
    person_ids: Iterable[int],
    now: dt.datetime,
) -> list[int]:
    """A pending SMS invitation of each person to the wave's instrument version, in one
    INSERT (no status events, no outbox rows); the ids of the wave's invitations, in order."""
    session.execute(
        insert(Invitation),
        [
            {
                "wave_id": wave_id,
                "instrument_version_id": version_id,
                "person_id": person_id,
                "channel": "sms",
                "token": secrets.token_urlsafe(24),
                "status": "pending",
                "created_at": now,
                "status_changed_at": now,
            }
            for person_id in person_ids
        ],
    )
    return list(
        session.scalars(
            select(Invitation.id).where(Invitation.wave_id == wave_id).order_by(Invitation.id)
        )
    )
