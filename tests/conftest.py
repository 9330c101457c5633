"""Shared fixtures: one database per test run, emptied after every test that used it.

The suite runs against SQLite by default and against PostgreSQL when
`CAREPULSE_TEST_DATABASE_URL` is set (the test command starts a throwaway server and
sets it). Migrations run once per session, exactly as in production.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from storage import db as storage_db
from storage.models import Base, Wave, WaveInstrument
from tests.support.web import make_app, twilio_settings


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
            # TRUNCATE fires no row triggers, so the audit log's append-only one allows it.
            names = ", ".join(t.name for t in tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            # SQLite has no TRUNCATE and its DELETE fires the audit log's append-only
            # triggers: take them out for the emptying and put back exactly what the
            # migrations made (SQLite keeps their SQL), all in this one transaction.
            triggers = conn.execute(
                text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
            ).all()
            for name, _sql in triggers:
                conn.execute(text(f'DROP TRIGGER "{name}"'))
            for table in tables:
                conn.execute(table.delete())
            for _name, sql in triggers:
                conn.execute(text(sql))


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
    yield make_app(database_url, tmp_path)


@pytest.fixture
def client(app):
    """A test client for the app."""
    return app.test_client()


@pytest.fixture
def runner(app):
    """A CLI runner that invokes `carepulse` commands against the app."""
    return app.test_cli_runner()


class Factory:
    """Builds stored objects for tests with sensible defaults; every call flushes."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._n = 0

    def _next(self) -> int:
        self._n += 1
        return self._n

    def home(self, name: str | None = None, **kw):
        from storage.models import CareHome

        name = name or f"Test Home {self._next()}"
        home = CareHome(key=" ".join(name.split()).lower(), name=name, **kw)
        self.session.add(home)
        self.session.flush()
        return home

    def person(self, home=None, role: str = "care_worker", **kw):
        import datetime as dt

        from storage.models import Person

        n = self._next()
        values = {
            "given_name": f"Person{n}",
            "family_name": "Test",
            "mobile": f"+4477009{n:05d}",
            "email": f"person{n}@example.org",
            "active_from": dt.date(2020, 1, 1),
        }
        values.update(kw)
        person = Person(care_home=home or self.home(), role=role, **values)
        self.session.add(person)
        self.session.flush()
        return person

    def programme(self, homes, asks, *, opens=None, closes=None, threshold: int = 5):
        """A programme with one cohort of `homes` and one baseline wave asking `asks`.

        `asks` is a list of (instrument key, audience dict, channel or None).
        """
        import datetime as dt

        from storage.models import Cohort, Programme, Wave, WaveInstrument
        from surveys.catalogue import ensure_version
        from surveys.instruments import load_library

        library = load_library()
        n = self._next()
        programme = Programme(key=f"prog-{n}", name=f"Programme {n}", anonymity_threshold=threshold)
        cohort = Cohort(programme=programme, key="c1", name="Cohort 1")
        cohort.homes = list(homes)
        opens = opens or dt.datetime(2027, 1, 4, 9, tzinfo=dt.UTC)
        closes = closes or opens + dt.timedelta(days=14)
        wave = Wave(
            cohort=cohort,
            key="baseline",
            kind="baseline",
            name="Baseline",
            opens_at=opens,
            closes_at=closes,
        )
        for key, audience, channel in asks:
            wave.instruments.append(
                WaveInstrument(
                    instrument_version=ensure_version(self.session, library[key]),
                    audience=audience,
                    channel=channel,
                )
            )
        self.session.add(programme)
        self.session.flush()
        return programme, wave

    def later_wave(
        self,
        earlier: Wave,
        *,
        opens: dt.datetime,
        closes: dt.datetime | None = None,
        key: str = "end",
        kind: str = "end",
        name: str | None = None,
    ) -> Wave:
        """A wave of `earlier`'s cohort asking again what `earlier` asked (the same
        instrument versions, audiences and channels), as an end wave repeats its baseline:
        open from `opens` to `closes` (14 days later unless given), named "End" (after
        `key`) unless `name` is given."""
        # Read all of `earlier` first: a lazy load once the new wave hangs off the cohort
        # would autoflush before the wave is in the session.
        cohort = earlier.cohort
        asks = [(a.instrument_version, a.audience, a.channel) for a in earlier.instruments]
        wave = Wave(
            cohort=cohort,
            key=key,
            kind=kind,
            name=name or key.capitalize(),
            opens_at=opens,
            closes_at=closes or opens + dt.timedelta(days=14),
            instruments=[
                WaveInstrument(instrument_version=version, audience=audience, channel=channel)
                for version, audience, channel in asks
            ],
        )
        self.session.add(wave)
        self.session.flush()
        return wave


@pytest.fixture
def factory(session: Session) -> Factory:
    """Builds homes, people and programmes in the test database."""
    return Factory(session)


TWILIO_SID = "AC" + "5" * 32
TWILIO_TOKEN = "test-auth-token-0123456789abcdef"
TWILIO_NUMBER = "+447700900999"


@pytest.fixture
def twilio_fake():
    """A Twilio-compatible server on 127.0.0.1 that the official SDK is pointed at."""
    from tests.support.twilio_server import FakeTwilio

    with FakeTwilio(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN) as fake:
        yield fake


class LiveApp:
    """The app served over real HTTP on loopback, so a fake Twilio can call its webhooks."""

    def __init__(self, app, url: str) -> None:
        self.app, self.url = app, url

    def settings(self):
        return self.app.config["CAREPULSE"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_twilio_app(engine, database_url, tmp_path, twilio_fake, request):
    """The app configured for Twilio (pointed at `twilio_fake`), served on loopback.

    Extra settings come from `@pytest.mark.app_config({...})`.
    """
    import threading

    from werkzeug.serving import make_server

    port = _free_port()
    config = {
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        **twilio_settings(),
        "TWILIO_API_BASE_URL": twilio_fake.base_url,
    }
    marker = request.node.get_closest_marker("app_config")
    if marker:
        config.update(marker.args[0])
    app = make_app(database_url, tmp_path, **config)
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield LiveApp(app, f"http://127.0.0.1:{port}")
    finally:
        server.shutdown()
        thread.join(timeout=5)
