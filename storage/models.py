"""Typed SQLAlchemy 2 models for carepulse.

Uniqueness rules that protect the evaluation (one invitation per person, instrument,
wave and subject; one answer per item per response; one row per provider message id)
are enforced by the database itself, so that no code path, however buggy or concurrent,
can store a duplicate.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from storage.vocabulary import (
    ACCOUNT_ROLES,
    CHANNELS,
    INVITATION_STATUSES,
    OUTBOX_PURPOSES,
    OUTBOX_STATUSES,
    RATER_RELATIONS,
    ROLES,
    STAFF_ROLES,
    WAVE_KINDS,
)

__all__ = [
    "CHANNELS",
    "INVITATION_STATUSES",
    "RATER_RELATIONS",
    "ROLES",
    "STAFF_ROLES",
    "WAVE_KINDS",
]

# Stable constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """The current time as an aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Stores aware datetimes as UTC; returns aware UTC datetimes on every backend.

    SQLite has no time zones, so without this a value read back would be naive and
    comparisons with aware datetimes would fail or, worse, silently shift by an hour.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; attach a time zone")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    """Declarative base with the shared naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Programme(Base):
    """An improvement programme: the unit a programme lead runs and an evaluator reports on."""

    __tablename__ = "programmes"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="Europe/London")
    anonymity_threshold: Mapped[int] = mapped_column(Integer, default=5)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    cohorts: Mapped[list[Cohort]] = relationship(back_populates="programme", order_by="Cohort.id")

    __table_args__ = (CheckConstraint("anonymity_threshold >= 1", name="threshold_positive"),)


class CareHome(Base):
    """A care home, identified by its name key and optionally its CQC location id."""

    __tablename__ = "care_homes"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    cqc_location_id: Mapped[str | None] = mapped_column(String(32), unique=True)
    local_authority: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    people: Mapped[list[Person]] = relationship(back_populates="care_home")


class Cohort(Base):
    """Managers (and their homes) who start a programme together."""

    __tablename__ = "cohorts"

    id: Mapped[int] = mapped_column(primary_key=True)
    programme_id: Mapped[int] = mapped_column(ForeignKey("programmes.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    starts_on: Mapped[dt.date | None] = mapped_column(Date)

    programme: Mapped[Programme] = relationship(back_populates="cohorts")
    homes: Mapped[list[CareHome]] = relationship(secondary="cohort_homes", order_by="CareHome.name")
    waves: Mapped[list[Wave]] = relationship(back_populates="cohort", order_by="Wave.opens_at")

    __table_args__ = (UniqueConstraint("programme_id", "key"),)


class CohortHome(Base):
    """A care home taking part in a cohort."""

    __tablename__ = "cohort_homes"

    cohort_id: Mapped[int] = mapped_column(
        ForeignKey("cohorts.id", ondelete="CASCADE"), primary_key=True
    )
    care_home_id: Mapped[int] = mapped_column(
        ForeignKey("care_homes.id", ondelete="CASCADE"), primary_key=True
    )


class Person(Base):
    """Someone on a roster. People who leave are marked with `active_to`, never deleted."""

    __tablename__ = "people"

    id: Mapped[int] = mapped_column(primary_key=True)
    external_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    given_name: Mapped[str] = mapped_column(String(100))
    family_name: Mapped[str] = mapped_column(String(100), default="")
    role: Mapped[str] = mapped_column(String(32))
    care_home_id: Mapped[int] = mapped_column(ForeignKey("care_homes.id"))
    mobile: Mapped[str | None] = mapped_column(String(20), unique=True)
    email: Mapped[str | None] = mapped_column(String(254), index=True)
    language: Mapped[str] = mapped_column(String(8), default="en")
    active_from: Mapped[dt.date] = mapped_column(Date)
    active_to: Mapped[dt.date | None] = mapped_column(Date)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    care_home: Mapped[CareHome] = relationship(back_populates="people")

    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role_known"),)

    @property
    def full_name(self) -> str:
        """Given and family name joined for display."""
        return f"{self.given_name} {self.family_name}".strip()

    def is_active_on(self, day: dt.date) -> bool:
        """Whether the person is on the roster on `day`."""
        return self.active_from <= day and (self.active_to is None or day < self.active_to)


class Instrument(Base):
    """A questionnaire, identified by a stable key; its wording lives in versions."""

    __tablename__ = "instruments"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(200))

    versions: Mapped[list[InstrumentVersion]] = relationship(
        back_populates="instrument", order_by="InstrumentVersion.version"
    )


class InstrumentVersion(Base):
    """One immutable wording of an instrument. A change is a new version, never an edit."""

    __tablename__ = "instrument_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    instrument_id: Mapped[int] = mapped_column(ForeignKey("instruments.id"))
    version: Mapped[int] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    instrument: Mapped[Instrument] = relationship(back_populates="versions")

    __table_args__ = (
        UniqueConstraint("instrument_id", "version"),
        UniqueConstraint("instrument_id", "content_hash"),
    )


class Wave(Base):
    """One round of asking within a cohort, open between two instants."""

    __tablename__ = "waves"

    id: Mapped[int] = mapped_column(primary_key=True)
    cohort_id: Mapped[int] = mapped_column(ForeignKey("cohorts.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    opens_at: Mapped[dt.datetime] = mapped_column()
    closes_at: Mapped[dt.datetime] = mapped_column()
    reminders: Mapped[dict[str, Any]] = mapped_column(default=dict)
    opened_at: Mapped[dt.datetime | None] = mapped_column()

    cohort: Mapped[Cohort] = relationship(back_populates="waves")
    instruments: Mapped[list[WaveInstrument]] = relationship(
        back_populates="wave", cascade="all, delete-orphan", order_by="WaveInstrument.id"
    )

    __table_args__ = (
        UniqueConstraint("cohort_id", "key"),
        CheckConstraint(_in("kind", WAVE_KINDS), name="kind_known"),
        CheckConstraint("closes_at > opens_at", name="closes_after_opening"),
    )


class WaveInstrument(Base):
    """Which instrument version a wave asks, of which roles, through which channel."""

    __tablename__ = "wave_instruments"

    id: Mapped[int] = mapped_column(primary_key=True)
    wave_id: Mapped[int] = mapped_column(ForeignKey("waves.id", ondelete="CASCADE"))
    instrument_version_id: Mapped[int] = mapped_column(ForeignKey("instrument_versions.id"))
    # {"roles": [...]} for a plain survey; {"subject_role": "manager", "raters":
    # {"self": [...], "staff": [...], ...}} for a 360 where each subject is appraised.
    audience: Mapped[dict[str, Any]] = mapped_column(default=dict)
    channel: Mapped[str | None] = mapped_column(String(8))
    # How SMS invitations ask: `conversation` (questions by text, answers by reply) or
    # `link` (a text with the survey link). None: conversation for short instruments.
    sms_mode: Mapped[str | None] = mapped_column(String(16))

    wave: Mapped[Wave] = relationship(back_populates="instruments")
    instrument_version: Mapped[InstrumentVersion] = relationship()

    __table_args__ = (UniqueConstraint("wave_id", "instrument_version_id"),)


class Invitation(Base):
    """One person asked to answer one instrument in one wave (about one subject, for a 360)."""

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    wave_id: Mapped[int] = mapped_column(ForeignKey("waves.id"))
    instrument_version_id: Mapped[int] = mapped_column(ForeignKey("instrument_versions.id"))
    person_id: Mapped[int] = mapped_column(ForeignKey("people.id"), index=True)
    subject_person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"), index=True)
    rater_relation: Mapped[str | None] = mapped_column(String(16))
    channel: Mapped[str] = mapped_column(String(8))
    token: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    status_changed_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Where an SMS conversation stands (surveys.conversation.State as JSON).
    sms_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    wave: Mapped[Wave] = relationship()
    instrument_version: Mapped[InstrumentVersion] = relationship()
    person: Mapped[Person] = relationship(foreign_keys=[person_id])
    subject: Mapped[Person | None] = relationship(foreign_keys=[subject_person_id])
    events: Mapped[list[InvitationEvent]] = relationship(
        back_populates="invitation", order_by="InvitationEvent.id", cascade="all, delete-orphan"
    )
    response: Mapped[Response | None] = relationship(back_populates="invitation")

    __table_args__ = (
        CheckConstraint(_in("status", INVITATION_STATUSES), name="status_known"),
        CheckConstraint(_in("channel", CHANNELS), name="channel_known"),
        CheckConstraint(
            "rater_relation IS NULL OR " + _in("rater_relation", RATER_RELATIONS),
            name="relation_known",
        ),
        CheckConstraint(
            "(subject_person_id IS NULL) = (rater_relation IS NULL)", name="subject_has_relation"
        ),
        # NULLs are distinct in unique constraints on both backends, so a plain unique
        # over the four columns would let non-360 invitations be doubled: two partial
        # indexes close that gap.
        Index(
            "uq_invitations_once",
            "wave_id",
            "instrument_version_id",
            "person_id",
            unique=True,
            sqlite_where=text("subject_person_id IS NULL"),
            postgresql_where=text("subject_person_id IS NULL"),
        ),
        Index(
            "uq_invitations_once_per_subject",
            "wave_id",
            "instrument_version_id",
            "person_id",
            "subject_person_id",
            unique=True,
            sqlite_where=text("subject_person_id IS NOT NULL"),
            postgresql_where=text("subject_person_id IS NOT NULL"),
        ),
    )


class InvitationEvent(Base):
    """The status history of an invitation, one row per change."""

    __tablename__ = "invitation_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    invitation_id: Mapped[int] = mapped_column(
        ForeignKey("invitations.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    detail: Mapped[str | None] = mapped_column(Text)

    invitation: Mapped[Invitation] = relationship(back_populates="events")


class Message(Base):
    """Every SMS and email in or out, with the provider's id and delivery status."""

    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    direction: Mapped[str] = mapped_column(String(3))
    channel: Mapped[str] = mapped_column(String(8))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    invitation_id: Mapped[int | None] = mapped_column(ForeignKey("invitations.id"), index=True)
    to_address: Mapped[str] = mapped_column(String(254))
    from_address: Mapped[str] = mapped_column(String(254))
    subject: Mapped[str | None] = mapped_column(String(300))
    body: Mapped[str | None] = mapped_column(Text)
    provider_id: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(16))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    person: Mapped[Person | None] = relationship()
    invitation: Mapped[Invitation | None] = relationship()

    __table_args__ = (
        UniqueConstraint("channel", "provider_id"),
        Index("ix_messages_person_created", "person_id", "created_at"),
        CheckConstraint("direction IN ('in', 'out')", name="direction_known"),
        CheckConstraint(_in("channel", CHANNELS), name="channel_known"),
    )


class Response(Base):
    """A person's answers to one invitation. At most one per invitation."""

    __tablename__ = "responses"

    id: Mapped[int] = mapped_column(primary_key=True)
    invitation_id: Mapped[int] = mapped_column(ForeignKey("invitations.id"), unique=True)
    channel: Mapped[str] = mapped_column(String(8))
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column()

    invitation: Mapped[Invitation] = relationship(back_populates="response")
    answers: Mapped[list[Answer]] = relationship(
        back_populates="response", order_by="Answer.id", cascade="all, delete-orphan"
    )


class Answer(Base):
    """One item's answer. `value` is NULL when the person skipped the item."""

    __tablename__ = "answers"

    id: Mapped[int] = mapped_column(primary_key=True)
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"))
    item_id: Mapped[str] = mapped_column(String(64))
    value: Mapped[int | None] = mapped_column(Integer)
    channel: Mapped[str] = mapped_column(String(8))
    answered_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    response: Mapped[Response] = relationship(back_populates="answers")

    __table_args__ = (UniqueConstraint("response_id", "item_id"),)


class OutboxItem(Base):
    """One message to send, exactly once: an invitation or one of its reminders.

    `key` (invitation, purpose, reminder number) is unique, so a second clock, a re-run or
    a race that tries to queue the same message again inserts nothing. A dispatcher claims
    a row (`sending`, with `claimed_at`/`claimed_by`) and commits before it calls the
    provider, so a crash leaves a `sending` row to reconcile rather than a silent resend.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(100), unique=True)
    invitation_id: Mapped[int] = mapped_column(
        ForeignKey("invitations.id", ondelete="CASCADE"), index=True
    )
    purpose: Mapped[str] = mapped_column(String(16))
    reminder_number: Mapped[int] = mapped_column(Integer, default=0)
    channel: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    not_before: Mapped[dt.datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_at: Mapped[dt.datetime | None] = mapped_column()
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    invitation: Mapped[Invitation] = relationship()
    message: Mapped[Message | None] = relationship()

    __table_args__ = (
        CheckConstraint(_in("purpose", OUTBOX_PURPOSES), name="purpose_known"),
        CheckConstraint(_in("status", OUTBOX_STATUSES), name="status_known"),
        CheckConstraint(_in("channel", CHANNELS), name="channel_known"),
        Index("ix_outbox_due", "status", "not_before"),
    )


class OptOut(Base):
    """A STOP (or unsubscribe) for an address; `revoked_at` is set when they opt back in."""

    __tablename__ = "opt_outs"

    id: Mapped[int] = mapped_column(primary_key=True)
    channel: Mapped[str] = mapped_column(String(8))
    address: Mapped[str] = mapped_column(String(254))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("people.id"))
    keyword: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column()

    __table_args__ = (
        UniqueConstraint("channel", "address"),
        CheckConstraint(_in("channel", CHANNELS), name="channel_known"),
    )


account_programmes = Table(
    "account_programmes",
    Base.metadata,
    Column("account_id", ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    Column("programme_id", ForeignKey("programmes.id", ondelete="CASCADE"), primary_key=True),
)
"""The programmes a programme lead or an evaluator may see. Admins need none: they see all."""


class Account(Base):
    """Someone who signs in to carepulse: an admin, a programme lead or an evaluator.

    Accounts are never deleted, only deactivated (`active` False), so that what an account
    did stays attributable. The email is stored lower-cased (the check makes sure of it),
    so that one address cannot hold two accounts by differing in case.
    """

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(32))
    # argon2id, in the PHC string format that carries its own salt and parameters.
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column()

    programmes: Mapped[list[Programme]] = relationship(
        secondary=account_programmes, order_by="Programme.key"
    )
    tokens: Mapped[list[ApiToken]] = relationship(back_populates="account", order_by="ApiToken.id")

    __table_args__ = (
        CheckConstraint(_in("role", ACCOUNT_ROLES), name="role_known"),
        CheckConstraint("email = lower(email)", name="email_lower_case"),
    )


class ApiToken(Base):
    """A bearer token for the JSON API, `cp_<prefix>_<secret>`, stored only as a hash.

    The prefix is public: it names the token in listings and in `carepulse user revoke`.
    The token has 256 random bits, so a plain SHA-256 of it cannot be reversed or guessed;
    a slow hash (as for passwords) would only slow every API call down.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    label: Mapped[str] = mapped_column(String(100), default="")
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column()
    revoked_at: Mapped[dt.datetime | None] = mapped_column()

    account: Mapped[Account] = relationship(back_populates="tokens")


class AuditEvent(Base):
    """One thing someone did that an administrator may have to account for later.

    Append-only: `storage.audit.record` is the only code that writes here, and it only
    inserts; the database itself refuses UPDATE and DELETE (triggers made by migration
    0006), so neither a bug nor someone with the application's credentials can quietly
    rewrite history. `detail` is a small JSON object that never holds a care worker's
    personal data, a token or a password (`storage.audit` checks).
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # An account email, "cli:<os user>" or "system"; NULL when nobody was signed in
    # (a refused sign-in).
    actor: Mapped[str | None] = mapped_column(String(254))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str | None] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    remote_addr: Mapped[str | None] = mapped_column(String(45))

    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_action_at", "action", "at"),
        Index("ix_audit_events_actor_at", "actor", "at"),
    )


class RateLimitCounter(Base):
    """One rate-limit count (`storage.rate_limits.DatabaseStorage`), shared by every web
    worker and kept across restarts.

    `key` is what flask-limiter counts by and the window (a client address, an invitation
    id, a digest of an API token or a keyed digest of a sign-in email), never an email
    address or phone number. A count whose `expires_at` has passed counts as nothing and is
    deleted now and then.
    """

    __tablename__ = "rate_limit_counters"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[dt.datetime] = mapped_column()

    __table_args__ = (Index("ix_rate_limit_counters_expires_at", "expires_at"),)
