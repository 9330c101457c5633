"""The database lifecycle for the web app: one session per request, and the `db` commands."""

from __future__ import annotations

import click
from flask import Flask, current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from storage import db as storage_db
from storage.privacy import use_suppression_key


def init_app(app: Flask) -> None:
    """Create the engine for the app's DATABASE_URL and close sessions after each request."""
    settings = app.config["CAREPULSE"]
    engine = storage_db.make_engine(settings.database_url)
    app.extensions["carepulse.engine"] = engine
    factory = storage_db.make_sessionmaker(engine)
    # Erased people's opt-outs are kept only as keyed digests: every session can match them.
    use_suppression_key(factory, settings.secret_key)
    app.extensions["carepulse.sessionmaker"] = factory
    app.teardown_appcontext(close_session)
    app.cli.add_command(db_group)


def get_engine() -> Engine:
    """The engine of the current app."""
    return current_app.extensions["carepulse.engine"]


def get_sessionmaker() -> sessionmaker[Session]:
    """The session factory of the current app."""
    return current_app.extensions["carepulse.sessionmaker"]


def get_session() -> Session:
    """The session of the current request or command, opened on first use."""
    if "db_session" not in g:
        g.db_session = get_sessionmaker()()
    return g.db_session


def close_session(_exc: BaseException | None = None) -> None:
    """Close the request's session; uncommitted work is rolled back."""
    session = g.pop("db_session", None)
    if session is not None:
        session.close()


@click.group("db")
def db_group() -> None:
    """Database migrations."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
def upgrade_command(revision: str) -> None:
    """Apply migrations (default: up to the newest)."""
    storage_db.upgrade(get_engine(), revision)
    click.echo(f"database at revision {storage_db.current_revision(get_engine())}")


@db_group.command("downgrade")
@click.argument("revision")
def downgrade_command(revision: str) -> None:
    """Revert migrations down to REVISION (`base` removes every table)."""
    storage_db.downgrade(get_engine(), revision)
    click.echo(f"database at revision {storage_db.current_revision(get_engine())}")


@db_group.command("current")
def current_command() -> None:
    """Print the database's revision and the newest one this code ships."""
    current = storage_db.current_revision(get_engine())
    click.echo(f"current: {current or 'none (not migrated)'}; newest: {storage_db.head_revision()}")
