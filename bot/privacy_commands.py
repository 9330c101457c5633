"""`carepulse erase`, `carepulse subject-access` and `carepulse purge`: a person's rights
over what carepulse holds about them, and the retention rule (see `storage.privacy`).

Each command is recorded in the audit log with the operating-system user who ran it. A
person is named by `id:NUMBER`, their staff number, mobile or email. Problems exit with
status 1 and say what to fix.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy.orm import Session

from bot.db import get_engine, get_session
from storage import db as storage_db
from storage.audit import SYSTEM_ACTOR, console_actor
from storage.models import Person
from storage.privacy import (
    PrivacyError,
    PurgeReport,
    erase_person,
    find_person,
    plan_erasure,
    purge_expired,
    subject_access_export,
    suppression_key,
)

log = logging.getLogger(__name__)


def _session() -> Session:
    if not storage_db.is_migrated(get_engine()):
        raise click.ClickException("the database is not migrated: run `carepulse db upgrade`")
    return get_session()


def _person(session: Session, reference: str) -> Person:
    try:
        return find_person(session, reference)
    except PrivacyError as exc:
        raise click.ClickException(str(exc)) from None


def _key() -> bytes:
    return suppression_key(current_app.config["SECRET_KEY"])


@click.command("erase")
@click.argument("reference", metavar="ID|MOBILE|EMAIL")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@with_appcontext
def erase_command(reference: str, yes: bool) -> None:
    """Erase a person: name, contact details, messages; answers per the programme's setting.

    REFERENCE is id:NUMBER, a staff number, a mobile or an email. Shows what will happen
    and asks first (unless --yes). Cannot be undone.
    """
    session = _session()
    person = _person(session, reference)
    plan = plan_erasure(session, person)
    click.echo(f"Erase id:{plan.person_id}, {plan.label}:")
    for line in plan.lines():
        click.echo(f"  {line}")
    if not yes and not click.confirm("This cannot be undone. Erase?", default=False):
        session.rollback()
        raise click.ClickException("nothing was erased")
    erase_person(session, person, actor=console_actor(), key=_key())
    session.commit()
    click.echo(
        f"erased id:{plan.person_id} (audit log: person_erase, person:{plan.person_id}).\n"
        "Take them off your roster file too, or the next import will add them again."
    )


@click.command("subject-access")
@click.argument("reference", metavar="ID|MOBILE|EMAIL")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="The JSON file to write (readable by you only).",
)
@with_appcontext
def subject_access_command(reference: str, out: Path) -> None:
    """Write what carepulse holds about a person to a JSON file (a subject access request).

    Never includes other people's 360 appraisals of them or who gave them.
    """
    session = _session()
    person = _person(session, reference)
    export = subject_access_export(session, person, actor=console_actor())
    text = json.dumps(export, indent=2, ensure_ascii=False) + "\n"
    try:
        _write_private(out, text)
    except OSError as exc:
        session.rollback()
        raise click.ClickException(f"cannot write {out}: {exc.strerror}") from None
    session.commit()
    answers = sum(len((i["response"] or {}).get("answers", [])) for i in export["invitations"])
    click.echo(
        f"wrote {out}: roster entry, {len(export['invitations'])} invitation(s), "
        f"{answers} answer(s), {len(export['messages'])} message(s), "
        f"{len(export['opt_outs'])} opt-out(s)"
    )


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by its owner only (it is personal data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT


@click.command("purge")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@with_appcontext
def purge_command(dry_run: bool) -> None:
    """Remove contact details and message text of people whose programmes all ended more
    than `retention_days` (programme file; default 365) ago. Answers stay."""
    session = _session()
    report = purge_expired(session, key=_key(), actor=console_actor(), dry_run=dry_run)
    session.commit()
    click.echo(report.summary())


def run_retention_purge(factory: Callable[[], Session], secret_key: str) -> PurgeReport | None:
    """The clock's daily job: one purge in a session of its own, committed (None if it failed)."""
    with factory() as session:
        try:
            report = purge_expired(session, key=suppression_key(secret_key), actor=SYSTEM_ACTOR)
            session.commit()
        except Exception:
            session.rollback()
            log.exception("clock: retention purge failed; tomorrow's run retries")
            return None
    if report.stale_suppressions:
        log.warning("clock: %s", report.summary())
    elif report.changed:
        log.info("clock: %s", report.summary())
    return report
