"""The audit log in the database: what `record` stores and refuses, the filters, and the
append-only rule that the database itself enforces on SQLite and PostgreSQL alike."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import DBAPIError

from storage import db as storage_db
from storage.audit import (
    WITHHELD,
    AuditDetailError,
    address_digest,
    console_actor,
    count_events,
    file_digest,
    find_events,
    known_actors,
    record,
    safe_text,
)
from storage.models import AuditEvent
from tests.conftest import _empty_all_tables

T0 = dt.datetime(2027, 1, 4, 9, 0, tzinfo=dt.UTC)


def _stored(session) -> list[AuditEvent]:
    session.rollback()
    session.expire_all()
    return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def test_record_stores_one_event_with_what_it_was_given(session):
    event = record(
        session,
        "report_export",
        actor="eval@example.org",
        target="programme:nwl-2027",
        detail={"table": "prepost", "filters": {"home": "Willow Court"}, "rows": 12},
        now=T0,
        remote_addr="192.0.2.7",
    )
    session.commit()
    [stored] = _stored(session)
    assert stored.id == event.id
    assert (stored.actor, stored.action, stored.target) == (
        "eval@example.org",
        "report_export",
        "programme:nwl-2027",
    )
    assert stored.detail == {"table": "prepost", "filters": {"home": "Willow Court"}, "rows": 12}
    assert stored.at == T0 and stored.at.tzinfo is not None
    assert stored.remote_addr == "192.0.2.7"


def test_record_defaults_to_now_and_an_empty_detail(session):
    before = dt.datetime.now(dt.UTC)
    record(session, "sign_out", actor="lead@example.org")
    session.commit()
    [stored] = _stored(session)
    assert stored.detail == {} and stored.target is None and stored.remote_addr is None
    assert before - dt.timedelta(seconds=1) <= stored.at <= dt.datetime.now(dt.UTC)


def test_an_unknown_action_is_refused(session):
    with pytest.raises(ValueError, match="unknown audit action 'looked_around'"):
        record(session, "looked_around", actor="system")
    assert _stored(session) == []


@pytest.mark.parametrize(
    ("detail", "reason"),
    [
        ({"password": "correct horse battery"}, "must not hold 'password'"),
        ({"who": {"Mobile": "x"}}, "must not hold 'Mobile'"),
        ({"note": "margaret.okafor@willowcourt.example"}, "email address"),
        ({"note": "rang 07700 900101 twice"}, "phone number"),
        ({"numbers": ["+447700900101"]}, "phone number"),
        ({"used": "cp_0123abcd_" + "A" * 43}, "API token"),
        ({"when": dt.date(2027, 1, 4)}, "plain JSON"),
        ({"ratio": float("nan")}, "plain JSON"),
        ({"long": "x" * 3000}, "at most 2000 characters"),
    ],
)
def test_a_detail_that_could_hold_personal_data_or_secrets_is_refused(session, detail, reason):
    with pytest.raises(AuditDetailError, match=reason):
        record(session, "api_pull", actor="eval@example.org", detail=detail)
    assert _stored(session) == []


def test_a_target_may_name_an_account_but_not_a_phone_or_a_token(session):
    record(session, "account_add", actor="cli:ops", target="account:lead@example.org")
    with pytest.raises(AuditDetailError, match="phone number"):
        record(session, "person_erase", actor="cli:ops", target="person:+447700900101")
    with pytest.raises(AuditDetailError, match="API token"):
        record(session, "token_revoke", actor="cli:ops", target="cp_0123abcd_secret")


def test_dates_counts_and_digests_are_not_mistaken_for_phone_numbers(session):
    detail = {
        "since": "2027-01-04",
        "rows": 12345678901,
        "file_sha256": "0123456789" + "ab" * 27,
        "filters": {"home": "Willow Court"},
    }
    assert record(session, "roster_import", actor="cli:ops", detail=detail).detail == detail


def test_safe_text_withholds_typed_text_that_looks_personal():
    assert safe_text("Willow Court") == "Willow Court"
    assert safe_text("jo@example.org") == WITHHELD
    assert safe_text("07700 900101") == WITHHELD
    assert safe_text("x" * 500, limit=10) == "x" * 10
    assert safe_text(None) is None


def test_address_digest_repeats_for_one_address_and_needs_the_secret():
    one = address_digest("secret-a", "Jo@Example.org ")
    assert one == address_digest("secret-a", "jo@example.org")
    assert one != address_digest("secret-b", "jo@example.org")
    assert one != address_digest("secret-a", "jw@example.org")
    assert "example" not in one and len(one) == 16


def test_console_actor_names_the_operating_system_user(monkeypatch):
    monkeypatch.setenv("LOGNAME", "opsuser")
    monkeypatch.setenv("USER", "opsuser")
    assert console_actor() == "cli:opsuser"


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "roster.csv"
    path.write_bytes(b"abc")
    assert file_digest(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _some_events(session) -> None:
    rows = [
        ("sign_in", "lead@example.org", 0),
        ("report_view", "lead@example.org", 1),
        ("sign_in", "eval@example.org", 2),
        ("api_pull", "eval@example.org", 3),
        ("roster_import", "cli:ops", 4),
    ]
    for action, actor, day in rows:
        record(session, action, actor=actor, now=T0 + dt.timedelta(days=day))
    session.commit()


def test_events_come_newest_first_and_filter_by_action_actor_and_time(session):
    _some_events(session)
    assert [e.action for e in find_events(session)] == [
        "roster_import",
        "api_pull",
        "sign_in",
        "report_view",
        "sign_in",
    ]
    assert [e.actor for e in find_events(session, action="sign_in")] == [
        "eval@example.org",
        "lead@example.org",
    ]
    lead = find_events(session, actor="lead@example.org")
    assert [e.action for e in lead] == ["report_view", "sign_in"]
    window = find_events(session, since=T0 + dt.timedelta(days=1), until=T0 + dt.timedelta(days=3))
    assert [e.action for e in window] == ["sign_in", "report_view"]
    assert count_events(session) == 5 and count_events(session, action="sign_in") == 2
    assert [e.action for e in find_events(session, limit=2, offset=2)] == [
        "sign_in",
        "report_view",
    ]
    assert known_actors(session) == ["cli:ops", "eval@example.org", "lead@example.org"]


# --- append-only ------------------------------------------------------------------------


def _one_committed_event(session) -> int:
    event = record(session, "sign_in", actor="lead@example.org", detail={"n": 1}, now=T0)
    session.commit()
    return event.id


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET actor = 'someone-else@example.org'",
        "UPDATE audit_events SET detail = '{}'",
        "DELETE FROM audit_events",
        "DELETE FROM audit_events WHERE action = 'sign_in'",
    ],
)
def test_the_database_refuses_to_change_or_delete_an_event(session, statement):
    event_id = _one_committed_event(session)
    with pytest.raises(DBAPIError, match="append-only"):
        session.execute(text(statement))
    [stored] = _stored(session)
    assert (stored.id, stored.actor, stored.detail) == (event_id, "lead@example.org", {"n": 1})


def test_the_orm_cannot_change_or_delete_an_event_either(session):
    _one_committed_event(session)
    [event] = _stored(session)
    event.actor = "someone-else@example.org"
    with pytest.raises(DBAPIError, match="append-only"):
        session.commit()
    [event] = _stored(session)
    session.delete(event)
    with pytest.raises(DBAPIError, match="append-only"):
        session.commit()
    [stored] = _stored(session)
    assert stored.actor == "lead@example.org"


def test_the_suite_can_still_empty_the_table_and_the_rule_survives(engine, session):
    _one_committed_event(session)
    session.close()
    _empty_all_tables(engine)
    assert session.scalar(select(func.count(AuditEvent.id))) == 0
    _one_committed_event(session)
    with pytest.raises(DBAPIError, match="append-only"):
        session.execute(text("DELETE FROM audit_events"))
    session.rollback()


def test_downgrading_0006_removes_the_log_and_upgrading_restores_the_rule(tmp_path):
    engine = storage_db.make_engine(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
    storage_db.upgrade(engine, "0006")
    storage_db.downgrade(engine, "0005")
    assert "audit_events" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        triggers = conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'"))
        assert triggers.all() == []
    storage_db.upgrade(engine, "0006")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO audit_events (at, actor, action, detail)"
                " VALUES ('2027-01-04 09:00:00', 'system', 'retention_purge', '{}')"
            )
        )
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_events"))
    engine.dispose()
