"""Rows inserted in bulk, past the app's own paths, where a test or a benchmark needs
thousands of them quickly (`open_wave` makes them one by one, with their events)."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Iterable

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from storage.models import Invitation, Person


def insert_care_workers(session: Session, home_id: int, count: int, now: dt.datetime) -> list[int]:
    """`count` care workers of the home (Bulk0 Test, Bulk1 Test ..., mobiles +447700100000
    upwards, English, on the roster since 2020), in one INSERT; the ids of the home's
    people, in order."""
    session.execute(
        insert(Person),
        [
            {
                "given_name": f"Bulk{i}",
                "family_name": "Test",
                "role": "care_worker",
                "care_home_id": home_id,
                "mobile": f"+447700{100000 + i:06d}",
                "language": "en",
                "active_from": dt.date(2020, 1, 1),
                "created_at": now,
                "updated_at": now,
            }
            for i in range(count)
        ],
    )
    return list(
        session.scalars(select(Person.id).where(Person.care_home_id == home_id).order_by(Person.id))
    )


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
