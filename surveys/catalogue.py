"""Keeps the database's instrument versions in step with the instrument files.

An instrument version is immutable: when a file's content changes, a new version row is
added and the old one stays, so answers always point at the exact wording they answered.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import Instrument, InstrumentVersion
from surveys.instruments import InstrumentDefinition


def ensure_version(session: Session, definition: InstrumentDefinition) -> InstrumentVersion:
    """The stored version whose content matches `definition`, adding it when new."""
    instrument = session.scalar(select(Instrument).where(Instrument.key == definition.key))
    if instrument is None:
        instrument = Instrument(key=definition.key, title=definition.title)
        session.add(instrument)
        session.flush()
    existing = session.scalar(
        select(InstrumentVersion).where(
            InstrumentVersion.instrument_id == instrument.id,
            InstrumentVersion.content_hash == definition.content_hash,
        )
    )
    if existing is not None:
        return existing
    newest = session.scalar(
        select(func.max(InstrumentVersion.version)).where(
            InstrumentVersion.instrument_id == instrument.id
        )
    )
    version = InstrumentVersion(
        instrument=instrument,
        version=max(definition.version, (newest or 0) + 1),
        content_hash=definition.content_hash,
        definition=definition.to_dict(),
    )
    instrument.title = definition.title
    session.add(version)
    session.flush()
    return version


_PARSED: dict[str, InstrumentDefinition] = {}


def definition_of(version: InstrumentVersion) -> InstrumentDefinition:
    """The instrument definition stored with a version, parsed once per process.

    Versions never change, and the content hash names the content exactly, so the parsed
    definition can be kept: every SMS reply and form page needs it.
    """
    parsed = _PARSED.get(version.content_hash)
    if parsed is None:
        parsed = _PARSED[version.content_hash] = InstrumentDefinition.from_dict(version.definition)
    return parsed
