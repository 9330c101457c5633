"""Turning an open wave into invitations: who is asked what, about whom, by which channel.

Eligibility is decided when the wave opens: people active on that day, in a home of the
cohort, in a role the wave asks, with an address for a channel they have not opted out of.
Staff turnover is high, so the roster of the day counts, not the roster of the programme's
start. Creating invitations twice is harmless: the database's unique indexes refuse a second
invitation for the same person, instrument, wave and subject, and existing ones are skipped.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from sqlalchemy import func, inspect, or_, select
from sqlalchemy.orm import Session

from storage.models import (
    Invitation,
    InvitationEvent,
    OptOut,
    Person,
    Wave,
    WaveInstrument,
    utcnow,
)

TOKEN_BYTES = 24
"""Survey-link tokens carry 192 bits from `secrets`: far beyond guessing."""


def new_token() -> str:
    """An unguessable survey-link token."""
    return secrets.token_urlsafe(TOKEN_BYTES)


@dataclass
class OpenReport:
    """What opening a wave did."""

    created: int = 0
    existing: int = 0
    unreachable: list[str] = field(default_factory=list)


def _opted_out(session: Session) -> set[tuple[str, str]]:
    rows = session.execute(
        select(OptOut.channel, OptOut.address).where(OptOut.revoked_at.is_(None))
    )
    return {(channel, address) for channel, address in rows}


def choose_channel(
    person: Person, preferred: str | None, blocked: set[tuple[str, str]]
) -> str | None:
    """The channel to invite `person` by: the preferred one when they can get it, else the other.

    SMS is the default for staff (few care workers have work email); email for managers.
    """
    addresses = {"sms": person.mobile, "email": person.email}
    default = "email" if person.role in ("manager", "proprietor") else "sms"
    order = [preferred or default] + [c for c in ("sms", "email") if c != (preferred or default)]
    for channel in order:
        address = addresses[channel]
        if address and (channel, address) not in blocked:
            return channel
    return None


def _home_people(session: Session, wave: Wave, day: dt.date) -> list[Person]:
    home_ids = [home.id for home in wave.cohort.homes]
    people = session.scalars(
        select(Person).where(Person.care_home_id.in_(home_ids)).order_by(Person.id)
    )
    return [p for p in people if p.is_active_on(day)]


def _pairs(
    item: WaveInstrument, people: list[Person]
) -> list[tuple[Person, Person | None, str | None]]:
    """(respondent, subject, relation) for each invitation the wave instrument implies."""
    audience = item.audience
    if "raters" not in audience:
        roles = set(audience.get("roles", []))
        return [(p, None, None) for p in people if p.role in roles]
    pairs: list[tuple[Person, Person | None, str | None]] = []
    subjects = [p for p in people if p.role == audience.get("subject_role")]
    for subject in subjects:
        for relation, roles in audience["raters"].items():
            if relation == "self":
                pairs.append((subject, subject, "self"))
                continue
            for rater in people:
                same_home = rater.care_home_id == subject.care_home_id
                if rater.id != subject.id and same_home and rater.role in roles:
                    pairs.append((rater, subject, relation))
    return pairs


def _invitation(
    wave: Wave,
    item: WaveInstrument,
    person: Person,
    subject: Person | None,
    relation: str | None,
    channel: str,
    now: dt.datetime,
    detail: str | None = None,
) -> Invitation:
    """A new pending invitation with a fresh token and the first entry of its history."""
    invitation = Invitation(
        wave=wave,
        instrument_version_id=item.instrument_version_id,
        person=person,
        subject=subject,
        rater_relation=relation,
        channel=channel,
        token=new_token(),
        status="pending",
        created_at=now,
        status_changed_at=now,
    )
    invitation.events.append(InvitationEvent(status="pending", at=now, detail=detail))
    return invitation


def open_wave(session: Session, wave: Wave, now: dt.datetime | None = None) -> OpenReport:
    """Create the wave's invitations for everyone eligible now; flushes, does not commit."""
    now = now or utcnow()
    tz = ZoneInfo(wave.cohort.programme.timezone)
    people = _home_people(session, wave, now.astimezone(tz).date())
    blocked = _opted_out(session)
    report = OpenReport()
    for item in wave.instruments:
        existing = {
            (inv.person_id, inv.subject_person_id)
            for inv in session.scalars(
                select(Invitation).where(
                    Invitation.wave_id == wave.id,
                    Invitation.instrument_version_id == item.instrument_version_id,
                )
            )
        }
        for person, subject, relation in _pairs(item, people):
            if (person.id, subject.id if subject else None) in existing:
                report.existing += 1
                continue
            channel = choose_channel(person, item.channel, blocked)
            if channel is None:
                report.unreachable.append(person.full_name)
                continue
            session.add(_invitation(wave, item, person, subject, relation, channel, now))
            report.created += 1
    if wave.opened_at is None:
        wave.opened_at = now
    session.flush()
    return report


# Statuses only move forward; a late or repeated event never takes one back.
_ORDER = {"pending": 0, "sent": 1, "delivered": 2, "started": 3, "completed": 4}
_FINAL = {"completed", "failed", "opted_out", "expired"}


def set_status(
    invitation: Invitation, status: str, at: dt.datetime | None = None, detail: str | None = None
) -> bool:
    """Move an invitation to `status`, recording the change; False when it would go backwards."""
    current = invitation.status
    if current == status or current in _FINAL:
        return False
    if status in _ORDER and _ORDER[status] < _ORDER.get(current, 0):
        return False
    at = at or utcnow()
    invitation.status = status
    invitation.status_changed_at = at
    event = InvitationEvent(status=status, at=at, detail=detail)
    state = inspect(invitation)
    if invitation.id is None or "events" not in state.unloaded:
        invitation.events.append(event)
    else:
        # Adding by id keeps a hot path (every SMS reply) from loading the whole history.
        event.invitation_id = invitation.id
        state.session.add(event)
    return True


def expire_wave(session: Session, wave: Wave, now: dt.datetime | None = None) -> int:
    """Expire the unfinished invitations of a wave that has closed; returns how many."""
    now = now or utcnow()
    count = 0
    for invitation in session.scalars(select(Invitation).where(Invitation.wave_id == wave.id)):
        if invitation.status not in _FINAL and set_status(invitation, "expired", now):
            count += 1
    session.flush()
    return count


class RaterError(ValueError):
    """A named rater cannot be added; the message says why."""


def add_named_rater(
    session: Session,
    wave: Wave,
    subject: Person,
    rater: Person,
    relation: str,
    now: dt.datetime | None = None,
) -> Invitation:
    """Invite `rater` to rate `subject` in the wave's 360 as `line_manager` or `peer`.

    Named raters sit outside the roster rules: a proprietor who owns several homes, or a
    manager from another home in the cohort as a peer. Adding the same rater twice returns
    the existing invitation (the database's unique index would refuse a second one).
    """
    now = now or utcnow()
    if relation not in ("line_manager", "peer"):
        raise RaterError(f"relation must be line_manager or peer, not {relation!r}")
    if rater.id == subject.id:
        raise RaterError("a manager's own rating is the self-rating, not a named rater")
    tz = ZoneInfo(wave.cohort.programme.timezone)
    if not rater.is_active_on(now.astimezone(tz).date()):
        raise RaterError(f"{rater.full_name} is not active on the roster")
    item = next((wi for wi in wave.instruments if "raters" in wi.audience), None)
    if item is None:
        raise RaterError(f"wave {wave.key} asks no 360-degree appraisal")
    if subject.role != item.audience.get("subject_role"):
        raise RaterError(f"{subject.full_name} is not appraised in this wave")
    existing = session.scalar(
        select(Invitation).where(
            Invitation.wave_id == wave.id,
            Invitation.instrument_version_id == item.instrument_version_id,
            Invitation.person_id == rater.id,
            Invitation.subject_person_id == subject.id,
        )
    )
    if existing is not None:
        return existing
    channel = choose_channel(rater, "email", _opted_out(session))
    if channel is None:
        raise RaterError(f"{rater.full_name} has no mobile or email that can be used")
    invitation = _invitation(wave, item, rater, subject, relation, channel, now, "named rater")
    session.add(invitation)
    session.flush()
    return invitation


def find_person(session: Session, reference: str) -> Person:
    """The person with this external id, mobile (any UK format) or email."""
    from storage.roster import normalise_mobile  # the roster's own number rules

    reference = reference.strip()
    candidates = [Person.external_id == reference, func.lower(Person.email) == reference.lower()]
    mobile = normalise_mobile(reference)
    if mobile:
        candidates.append(Person.mobile == mobile)
    people = session.scalars(select(Person).where(or_(*candidates))).all()
    if len(people) != 1:
        raise LookupError(
            f"no one on the roster is {reference!r}"
            if not people
            else f"{reference!r} matches {len(people)} people; use the external id"
        )
    return people[0]


def find_wave(
    session: Session, programme_key: str, wave_key: str, subject: Person, cohort_key: str | None
) -> Wave:
    """The wave `wave_key` of the cohort (given, or the one whose homes include the subject's)."""
    from storage.models import Cohort, CohortHome, Programme

    stmt = (
        select(Wave)
        .join(Cohort, Wave.cohort_id == Cohort.id)
        .join(Programme, Cohort.programme_id == Programme.id)
        .where(Programme.key == programme_key, Wave.key == wave_key)
    )
    if cohort_key:
        stmt = stmt.where(Cohort.key == cohort_key)
    else:
        stmt = stmt.join(CohortHome, CohortHome.cohort_id == Cohort.id).where(
            CohortHome.care_home_id == subject.care_home_id
        )
    waves = session.scalars(stmt).all()
    if len(waves) != 1:
        raise LookupError(
            f"no wave {wave_key!r} for {subject.full_name}'s cohort"
            if not waves
            else f"wave {wave_key!r} is ambiguous; name the cohort with --cohort"
        )
    return waves[0]
