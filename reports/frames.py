"""Stored data as pandas frames, one row per invitation or per answer, without names or
contact details: reports work on these and nothing else."""

from __future__ import annotations

import io
from typing import Any

import pandas as pd
from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from storage.models import (
    Answer,
    AuditEvent,
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
    WaveInstrument,
)

FUNNEL_STAGES = ("sent", "delivered", "started", "completed")
REPORT_CHANGING_ACTIONS = ("person_erase", "retention_purge")
"""Audit actions whose work changes what a report reads without adding an answer,
invitation or status change (erasure detaches or deletes answers; a purge removes
people's details): `data_version` counts these events and no others."""
INVITATION_COLUMNS = [
    "invitation_id",
    "programme",
    "cohort",
    "wave",
    "wave_kind",
    "wave_opens_at",
    "wave_closes_at",
    "instrument",
    "instrument_version_id",
    "home",
    "role",
    "channel",
    "relation",
    "status",
    "person_id",
    "subject_id",
    "active_from",
    "active_to",
]
_INVITATION_FLAGS = [*(f"reached_{stage}" for stage in FUNNEL_STAGES), "responded"]
_INVITATION_QUERY_COLUMNS = [*INVITATION_COLUMNS, *_INVITATION_FLAGS, "items_answered"]
ANSWER_COLUMNS = [
    "invitation_id",
    "cohort",
    "wave",
    "wave_kind",
    "wave_opens_at",
    "instrument",
    "instrument_version_id",
    "relation",
    "person_id",
    "subject_id",
    "home",
    "role",
    "item_id",
    "value",
    "channel",
    "completed",
]
ITEM_COLUMNS = [
    "instrument",
    "instrument_version_id",
    "position",
    "item_id",
    "text",
    "scale_min",
    "scale_max",
    "reverse",
    "scales",
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
    """One row per invitation of the programme, with its wave, instrument, home and status,
    the funnel stages it ever reached (`reached_<stage>`), whether anything was answered
    (`responded`) and how many of its `items_total` items have a value (`items_answered`)."""
    ids = _with_context(select(Invitation.id), programme_key).scalar_subquery()
    # The funnel needs the furthest stage ever reached: an invitation that was delivered
    # and then expired unanswered still counts as delivered. Aggregated in the database:
    # one row per invitation instead of its whole history (647,419 events in bench/reports.py).
    reached = (
        select(
            InvitationEvent.invitation_id,
            *(
                func.max(case((InvitationEvent.status == stage, 1), else_=0)).label(stage)
                for stage in FUNNEL_STAGES
            ),
        )
        .where(InvitationEvent.invitation_id.in_(ids))
        .group_by(InvitationEvent.invitation_id)
        .subquery()
    )
    # Items answered with a value (SKIP and left-unanswered items are stored as NULL).
    answered = (
        select(Response.invitation_id, func.count(Answer.value).label("n"))
        .join(Answer, Answer.response_id == Response.id, isouter=True)
        .where(Response.invitation_id.in_(ids))
        .group_by(Response.invitation_id)
        .subquery()
    )
    stmt = select(
        Invitation.id,
        Programme.key,
        Cohort.key,
        Wave.key,
        Wave.kind,
        Wave.opens_at,
        Wave.closes_at,
        Instrument.key,
        Invitation.instrument_version_id,
        CareHome.name,
        Person.role,
        Invitation.channel,
        Invitation.rater_relation,
        Invitation.status,
        Invitation.person_id,
        Invitation.subject_person_id,
        Person.active_from,
        Person.active_to,
        *(func.coalesce(reached.c[stage], 0) for stage in FUNNEL_STAGES),
        case((answered.c.invitation_id.is_not(None), 1), else_=0),
        func.coalesce(answered.c.n, 0),
    )
    stmt = stmt.outerjoin(reached, reached.c.invitation_id == Invitation.id)
    stmt = stmt.outerjoin(answered, answered.c.invitation_id == Invitation.id)
    stmt = _with_context(stmt, programme_key).order_by(Invitation.id)
    frame = _rows(session, stmt, _INVITATION_QUERY_COLUMNS, _INVITATION_TYPES)
    for flag in _INVITATION_FLAGS:
        frame[flag] = frame[flag].astype(bool)
    totals = items_frame(session, programme_key).groupby("instrument_version_id").size()
    frame["items_total"] = frame["instrument_version_id"].map(totals).fillna(0).astype(int)
    return frame


def answers_frame(session: Session, programme_key: str) -> pd.DataFrame:
    """One row per answered item, keyed by pseudonymous ids (person, subject), never names."""
    stmt = (
        select(
            Invitation.id,
            Cohort.key,
            Wave.key,
            Wave.kind,
            Wave.opens_at,
            Instrument.key,
            Invitation.instrument_version_id,
            Invitation.rater_relation,
            Invitation.person_id,
            Invitation.subject_person_id,
            CareHome.name,
            Person.role,
            Answer.item_id,
            Answer.value,
            Answer.channel,
            Response.completed_at.is_not(None),
        )
        .join(Response, Answer.response_id == Response.id)
        .join(Invitation, Response.invitation_id == Invitation.id)
    )
    stmt = _with_context(stmt, programme_key).where(Answer.value.is_not(None))
    return _rows(session, stmt, ANSWER_COLUMNS, _ANSWER_TYPES)


def items_frame(session: Session, programme_key: str) -> pd.DataFrame:
    """One row per item of every instrument version the programme's waves ask: its order,
    wording (the "others" phrasing for a 360), scale range, whether it is reverse-scored,
    and the subscales (`scales`, a tuple of names) it belongs to.

    Read from the stored definition (`InstrumentVersion.definition`), which is immutable,
    so a report always scores a wave with the wording it was asked with.
    """
    versions = session.execute(
        select(Instrument.key, InstrumentVersion.id, InstrumentVersion.definition)
        .join(Instrument, InstrumentVersion.instrument_id == Instrument.id)
        .where(
            InstrumentVersion.id.in_(
                select(WaveInstrument.instrument_version_id)
                .join(Wave, WaveInstrument.wave_id == Wave.id)
                .join(Cohort, Wave.cohort_id == Cohort.id)
                .join(Programme, Cohort.programme_id == Programme.id)
                .where(Programme.key == programme_key)
            )
        )
        .order_by(Instrument.key, InstrumentVersion.id)
    ).all()
    rows = []
    for key, version_id, definition in versions:
        scales = definition.get("response_scales", {})
        membership: dict[str, list[str]] = {}
        for scale_name, item_ids in (definition.get("scales") or {}).items():
            for item_id in item_ids:
                membership.setdefault(item_id, []).append(scale_name)
        for position, item in enumerate(definition.get("items", []), start=1):
            scale = scales.get(item.get("scale"), {})
            text = item.get("text")
            if isinstance(text, dict):
                text = text.get("others") or text.get("default") or next(iter(text.values()))
            rows.append(
                [
                    key,
                    version_id,
                    position,
                    item["id"],
                    text,
                    scale.get("min"),
                    scale.get("max"),
                    bool(item.get("reverse", False)),
                    tuple(membership.get(item["id"], ())),
                ]
            )
    return pd.DataFrame(rows, columns=ITEM_COLUMNS)


def min_raters(session: Session, programme_key: str) -> dict[str, int]:
    """The programme's minimum group size per 360 rater relation (`staff`, `peer`,
    `line_manager`), as loaded from its programme file; `self` is always 1."""
    settings = session.scalar(select(Programme.settings).where(Programme.key == programme_key))
    if settings is None:
        raise LookupError(f"no programme with key {programme_key!r}")
    return {"self": 1, **{k: int(v) for k, v in (settings.get("min_raters") or {}).items()}}


def anonymity_threshold(session: Session, programme_key: str) -> int:
    """The programme's minimum group size for any reported figure."""
    value = session.scalar(
        select(Programme.anonymity_threshold).where(Programme.key == programme_key)
    )
    if value is None:
        raise LookupError(f"no programme with key {programme_key!r}")
    return value


def subjects_rated(session: Session, programme_key: str) -> list[int]:
    """Person ids of the managers rated in the programme's 360s (ids only, no names)."""
    stmt = _with_context(
        select(Invitation.subject_person_id).where(Invitation.subject_person_id.is_not(None)),
        programme_key,
    ).distinct()
    return sorted(session.scalars(stmt))


def data_version(session: Session, programme_key: str) -> tuple[Any, ...]:
    """A cheap fingerprint of everything a report reads: it changes whenever an answer,
    an invitation, a status change, a person or the programme's settings change, so a
    cached report can be reused exactly as long as it would come out the same."""
    programme = session.execute(
        select(Programme.id, Programme.anonymity_threshold, Programme.settings).where(
            Programme.key == programme_key
        )
    ).first()
    if programme is None:
        return (None,)
    # Each page view pays for this: only maxima of primary keys (index lookups), no counts
    # or scans of the answers. Every change a report can see adds a row to one of these
    # tables: an answer, an invitation, a status change (a survey completing), an audit
    # event of an erasure or a purge; people and waves are small tables. Other audit
    # events (every report view and API pull writes one) must not count, or no report
    # would ever be reused.
    changes_data = AuditEvent.action.in_(REPORT_CHANGING_ACTIONS)
    aggregates = [
        select(func.max(Answer.id)),
        select(func.max(Invitation.id)),
        select(func.max(InvitationEvent.id)),
        select(func.max(AuditEvent.id)).where(changes_data),
        select(func.max(Person.updated_at)),
        select(func.count(Wave.id)),
        select(func.max(Wave.opens_at)),
        select(func.max(Wave.closes_at)),
    ]
    row = session.execute(select(*(a.scalar_subquery() for a in aggregates))).one()
    settings = repr(sorted((programme.settings or {}).items()))
    return (programme.id, programme.anonymity_threshold, settings, *row)


# --- reading rows fast ------------------------------------------------------------------

# Text columns with a handful of distinct values (keys, kinds, names of homes and roles)
# are pandas categoricals: every groupby and merge on them then hashes small integer codes
# instead of a million strings (about 2 s of a 1,000,000-answer report, bench/reports.py).
# `relation` stays text, because reports fill its gaps with "-".
_INVITATION_CATEGORIES = (
    "programme",
    "cohort",
    "wave",
    "wave_kind",
    "instrument",
    "home",
    "role",
    "channel",
    "status",
)
_ANSWER_CATEGORIES = ("cohort", "wave", "wave_kind", "instrument", "home", "role", "item_id")
_ANSWER_CATEGORIES += ("channel",)

_INVITATION_TYPES = {
    "int": (
        "invitation_id",
        "instrument_version_id",
        "person_id",
        *_INVITATION_FLAGS,
        "items_answered",
    ),
    "float": ("subject_id",),
    "instant": ("wave_opens_at", "wave_closes_at"),
    "date": ("active_from", "active_to"),
    "category": _INVITATION_CATEGORIES,
}
_ANSWER_TYPES = {
    "int": ("invitation_id", "instrument_version_id", "person_id", "value"),
    "float": ("subject_id",),
    "instant": ("wave_opens_at",),
    "bool": ("completed",),
    "category": _ANSWER_CATEGORIES,
}


def _rows(
    session: Session, stmt: Select[Any], columns: list[str], types: dict[str, tuple[str, ...]]
) -> pd.DataFrame:
    """The rows of `stmt` as a frame with `columns`, typed as the ORM would give them.

    On PostgreSQL the rows come through `COPY (query) TO STDOUT` as CSV into
    `pandas.read_csv`: for a million answers, building SQLAlchemy Row objects took most of
    the report's time and 1.4 GB (bench/reports.py). Elsewhere, the plain query.
    """
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        frame = pd.DataFrame(session.execute(stmt).all(), columns=columns)
        return _categorised(frame, types.get("category", ()))
    compiled = stmt.compile(dialect=connection.dialect)
    buffer = io.BytesIO()
    driver = connection.connection.driver_connection
    query = f"COPY ({compiled.string}) TO STDOUT WITH (FORMAT csv)"
    # psycopg binds the parameters itself: nothing is pasted into the SQL text.
    with driver.cursor() as cursor, cursor.copy(query, compiled.params) as copy:  # type: ignore[union-attr]
        for block in copy:
            buffer.write(block)
    buffer.seek(0)
    categories = types.get("category", ())
    dtypes = {c: "category" if c in categories else "str" for c in columns}
    frame = pd.read_csv(buffer, names=columns, dtype=dtypes, keep_default_na=False, na_values=[""])
    return _typed(frame, types)


def _categorised(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """`columns` as categoricals of their text values (missing stays missing)."""
    for column in columns:
        frame[column] = frame[column].astype("str").astype("category")
    return frame


def _typed(frame: pd.DataFrame, types: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    """CSV text columns as the types the ORM path gives (None for an empty cell)."""
    for column in types.get("int", ()):
        frame[column] = frame[column].astype("int64")
    for column in types.get("float", ()):
        frame[column] = frame[column].astype("float64")
    for column in types.get("instant", ()):
        frame[column] = pd.to_datetime(frame[column], utc=True).astype("datetime64[us, UTC]")
    for column in types.get("date", ()):
        dates = pd.to_datetime(frame[column], format="%Y-%m-%d")
        values = dates.dt.date.astype(object)
        frame[column] = values.where(dates.notna(), None)
    for column in types.get("bool", ()):
        frame[column] = frame[column] == "t"
    return frame
