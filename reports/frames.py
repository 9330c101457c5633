"""Stored data as pandas frames, one row per invitation or per answer, without names or
contact details: reports work on these and nothing else."""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from storage.models import (
    Answer,
    CareHome,
    Cohort,
    Instrument,
    InstrumentVersion,
    Invitation,
    InvitationEvent,
    Person,
    Programme,
    Response,
    Wave,
)

FUNNEL_STAGES = ("sent", "delivered", "started", "completed")
INVITATION_COLUMNS = [
    "invitation_id",
    "programme",
    "cohort",
    "wave",
    "wave_kind",
    "wave_opens_at",
    "instrument",
    "home",
    "role",
    "channel",
    "relation",
    "status",
    "person_id",
    "subject_id",
]


def _with_context(stmt: Select[Any], programme_key: str) -> Select[Any]:
    """Join an invitation query to its wave, cohort, programme, instrument, person and home,
    keeping the programme's rows only."""
    return (
        stmt.join(Wave, Invitation.wave_id == Wave.id)
        .join(Cohort, Wave.cohort_id == Cohort.id)
        .join(Programme, Cohort.programme_id == Programme.id)
        .join(InstrumentVersion, Invitation.instrument_version_id == InstrumentVersion.id)
        .join(Instrument, InstrumentVersion.instrument_id == Instrument.id)
        .join(Person, Invitation.person_id == Person.id)
        .join(CareHome, Person.care_home_id == CareHome.id)
        .where(Programme.key == programme_key)
    )


def invitations_frame(session: Session, programme_key: str) -> pd.DataFrame:
    """One row per invitation of the programme, with its wave, instrument, home and status."""
    stmt = select(
        Invitation.id,
        Programme.key,
        Cohort.key,
        Wave.key,
        Wave.kind,
        Wave.opens_at,
        Instrument.key,
        CareHome.name,
        Person.role,
        Invitation.channel,
        Invitation.rater_relation,
        Invitation.status,
        Invitation.person_id,
        Invitation.subject_person_id,
    )
    stmt = _with_context(stmt, programme_key).order_by(Invitation.id)
    frame = pd.DataFrame(session.execute(stmt).all(), columns=INVITATION_COLUMNS)
    # The funnel needs the furthest stage ever reached: an invitation that was delivered
    # and then expired unanswered still counts as delivered.
    events = session.execute(
        select(InvitationEvent.invitation_id, InvitationEvent.status).where(
            InvitationEvent.invitation_id.in_(select(stmt.subquery().c.id))
        )
    ).all()
    reached = pd.DataFrame(events, columns=["invitation_id", "status"])
    for stage in FUNNEL_STAGES:
        ids = set(reached.loc[reached["status"] == stage, "invitation_id"])
        frame[f"reached_{stage}"] = frame["invitation_id"].isin(ids)
    return frame


def answers_frame(session: Session, programme_key: str) -> pd.DataFrame:
    """One row per answered item, keyed by pseudonymous ids (person, subject), never names."""
    stmt = (
        select(
            Cohort.key,
            Wave.key,
            Wave.kind,
            Instrument.key,
            Invitation.rater_relation,
            Invitation.person_id,
            Invitation.subject_person_id,
            CareHome.name,
            Answer.item_id,
            Answer.value,
            Response.completed_at.is_not(None),
        )
        .join(Response, Answer.response_id == Response.id)
        .join(Invitation, Response.invitation_id == Invitation.id)
    )
    stmt = _with_context(stmt, programme_key).where(Answer.value.is_not(None))
    columns = [
        "cohort",
        "wave",
        "wave_kind",
        "instrument",
        "relation",
        "person_id",
        "subject_id",
        "home",
        "item_id",
        "value",
        "completed",
    ]
    return pd.DataFrame(session.execute(stmt).all(), columns=columns)


def anonymity_threshold(session: Session, programme_key: str) -> int:
    """The programme's minimum group size for any reported figure."""
    value = session.scalar(
        select(Programme.anonymity_threshold).where(Programme.key == programme_key)
    )
    if value is None:
        raise LookupError(f"no programme with key {programme_key!r}")
    return value
