"""Shared fixtures: one database per test run, emptied after every test that used it.

The suite runs against SQLite by default and against PostgreSQL when
`CAREPULSE_TEST_DATABASE_URL` is set (the test command starts a throwaway server and
sets it). Migrations run once per session, exactly as in production.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from storage import db as storage_db
from storage.models import Base


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of the database under test."""
    url = os.environ.get("CAREPULSE_TEST_DATABASE_URL")
    if url:
        return url
    path = tmp_path_factory.mktemp("db") / "carepulse-test.sqlite3"
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def migrated_engine(database_url: str) -> Iterator[Engine]:
    """An engine on a database upgraded to the newest migration."""
    engine = storage_db.make_engine(database_url)
    if engine.dialect.name == "postgresql":
        # A previous interrupted run may have left tables behind: start from nothing.
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    storage_db.upgrade(engine)
    yield engine
    engine.dispose()


def _empty_all_tables(engine: Engine) -> None:
    tables = list(reversed(Base.metadata.sorted_tables))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            names = ", ".join(t.name for t in tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                conn.execute(table.delete())


@pytest.fixture
def engine(migrated_engine: Engine) -> Iterator[Engine]:
    """The migrated engine; every row written during the test is removed afterwards."""
    yield migrated_engine
    _empty_all_tables(migrated_engine)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session on the test database. Tests may commit; the tables are emptied after."""
    factory = storage_db.make_sessionmaker(engine)
    with factory() as s:
        yield s


@pytest.fixture
def app(engine: Engine, database_url: str, tmp_path: Path):
    """The Flask app on the test database, with embedded development transports."""
    from bot import create_app

    application = create_app(
        {
            "TESTING": True,
            "DATABASE_URL": database_url,
            "SECRET_KEY": "test-secret-key",
            "PUBLIC_BASE_URL": "http://127.0.0.1:5000",
            "INSTANCE_PATH": str(tmp_path / "instance"),
        }
    )
    yield application


@pytest.fixture
def client(app):
    """A test client for the app."""
    return app.test_client()


@pytest.fixture
def runner(app):
    """A CLI runner that invokes `carepulse` commands against the app."""
    return app.test_cli_runner()
