"""The database the benchmarks run on: PostgreSQL, made fresh and migrated, the rows every
set-up needs (waves asking by SMS, conversations under way, texts queued), vacuumed.

The benchmarks import it as `bench.database`, after putting the project's root first on
sys.path. Its own imports are the standard library's: the project and SQLAlchemy are
imported inside the functions that need them, because bench/reports.py counts its
measuring processes' memory from after their imports.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Iterable
from typing import Any

STAFF_ROLES = ["care_worker"] * 65 + ["senior_care_worker"] * 20 + ["nurse"] * 12
STAFF_ROLES += ["deputy_manager"] * 3
"""Staff roles in the proportions of the benchmarks' care homes, cycled through person by person."""


# --------------------------------------------------------------------------- command line


def add_database_arguments(parser: argparse.ArgumentParser) -> None:
    """--database-url (default $CAREPULSE_PG_URL) and --reset."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CAREPULSE_PG_URL"),
        help="PostgreSQL URL (default: $CAREPULSE_PG_URL, set by scripts/with-postgres)",
    )
    parser.add_argument("--reset", action="store_true", help="DROP every table first")


def psycopg_url(url: str) -> str:
    """`url` with the driver SQLAlchemy is to use: postgres:// and postgresql:// become
    postgresql+psycopg:// (psycopg 3); any other URL as given."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


# --------------------------------------------------------------------------- the database


def migrate_fresh(
    engine: Any,
    reset: bool,
    refusal: str = "bench: the database has tables; use a fresh one or pass --reset",
) -> None:
    """Migrate an empty PostgreSQL database to the project's schema; with `reset`, DROP
    everything in it first. Exits with `refusal` when it has tables and `reset` is not
    given ("{tables}" in it stands for the first few table names)."""
    from sqlalchemy import inspect, text

    from storage import db as storage_db

    if engine.dialect.name != "postgresql":
        raise SystemExit(f"bench: needs PostgreSQL, not {engine.dialect.name} (see --help)")
    tables = inspect(engine).get_table_names()
    if tables and not reset:
        raise SystemExit(refusal.format(tables=", ".join(sorted(tables)[:4])))
    if tables:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    storage_db.upgrade(engine)


def vacuum_analyze(engine: Any) -> None:
    """VACUUM ANALYZE the whole database, for a steady state, as a database in service
    would be: no autovacuum of the fresh tables competing with the measurement, and
    planner statistics that know the sizes."""
    from sqlalchemy import text

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def server_version(url: str) -> str:
    """The PostgreSQL server's `server_version`, e.g. "15.18 (Debian 15.18-0+deb12u1)"."""
    from sqlalchemy import text

    from storage import db as storage_db

    engine = storage_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.scalar(text("SHOW server_version")))
    finally:
        engine.dispose()


def postmaster_pid(url: str) -> int | None:
    """The PostgreSQL server's main process, if it runs on this machine."""
    from sqlalchemy import text

    from storage import db as storage_db

    engine = storage_db.make_engine(url)
    try:
        with engine.connect() as conn:
            backend = conn.scalar(text("SELECT pg_backend_pid()"))
        with open(f"/proc/{backend}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None
    finally:
        engine.dispose()


def mobiles(count: int) -> list[str]:
    """`count` distinct E.164 UK mobiles: +447700900000, +447700900001, ..."""
    if count > 100_000:
        raise ValueError("at most 100,000 people (+4477009xxxxx)")
    return [f"+4477009{i:05d}" for i in range(count)]


def sms_wave(
    cohort: Any,
    now: dt.datetime,
    version: Any,
    audience: dict[str, Any],
    sms_mode: str,
    opened: bool = False,
) -> Any:
    """The cohort's baseline wave, open from an hour ago for a week, asking `audience` the
    instrument `version` by SMS (`sms_mode` "conversation" or "link"); with `opened`, marked
    opened now (for invitations written in bulk rather than by `open_wave`)."""
    from storage.models import Wave, WaveInstrument

    wave = Wave(
        cohort=cohort,
        key="baseline",
        kind="baseline",
        name="Baseline",
        opens_at=now - dt.timedelta(hours=1),
        closes_at=now + dt.timedelta(days=7),
    )
    if opened:
        wave.opened_at = now
    wave.instruments.append(
        WaveInstrument(
            instrument_version=version, audience=audience, channel="sms", sms_mode=sms_mode
        )
    )
    return wave


def open_conversations(session: Any, wave: Any, now: dt.datetime) -> Any:
    """Open the wave (`surveys.invitations.open_wave`) and start every SMS conversation of
    it (`surveys.sms_inbox.opening`, status `sent`), as if each opening text had gone out;
    open_wave's report."""
    from sqlalchemy import select

    from storage.models import Invitation
    from surveys.invitations import open_wave, set_status
    from surveys.sms_inbox import opening

    report = open_wave(session, wave, now)
    for invitation in session.scalars(select(Invitation).where(Invitation.wave_id == wave.id)):
        opening(invitation)
        set_status(invitation, "sent", now)
    return report


def queue_texts(
    session: Any,
    wave_id: int,
    version_id: int,
    person_ids: Iterable[int],
    now: dt.datetime,
    not_before: dt.datetime,
) -> None:
    """A pending SMS invitation of each person, and its text queued in the outbox (due at
    `not_before`), inserted in bulk."""
    from sqlalchemy import insert

    from storage.models import OutboxItem
    from surveys.outbox import outbox_key
    from tests.support.bulk import insert_pending_invitations

    invitation_ids = insert_pending_invitations(session, wave_id, version_id, person_ids, now)
    session.execute(
        insert(OutboxItem),
        [
            {
                "key": outbox_key(invitation_id, "invitation"),
                "invitation_id": invitation_id,
                "purpose": "invitation",
                "channel": "sms",
                "status": "queued",
                "not_before": not_before,
            }
            for invitation_id in invitation_ids
        ],
    )
