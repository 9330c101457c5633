"""The audit log as administrators and auditors meet it: every hooked action leaves exactly
one event naming who, what and from where; only admins read it (page, CSV, console); and
no event holds a password, a token or a care worker's name, mobile or email."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from sqlalchemy import select

from bot.audit_view import record_after_reading
from bot.cli import cli
from bot.demo import run_cycle
from bot.outbound import Outbound
from bot.transports import DevMailbox, DevPhone
from reports.frames import subjects_rated
from storage import db as storage_db
from storage.accounts import create_account, issue_token
from storage.audit import address_digest, console_actor, record, safe_text
from storage.models import AuditEvent, Person, Programme, utcnow
from tests.support.web import PASSWORD, csrf_token, sign_in

KEY = "nwl-leadership-2027"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
REPORT_DETAIL_KEYS = {"pre", "post", "filters"}


def _events(session, action: str | None = None) -> list[AuditEvent]:
    """The events the app committed, oldest first."""
    session.rollback()
    session.expire_all()
    stmt = select(AuditEvent).order_by(AuditEvent.id)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    return list(session.scalars(stmt))


def _only(session, action: str) -> AuditEvent:
    events = _events(session, action)
    assert len(events) == 1, [(e.action, e.target, e.detail) for e in events]
    return events[0]


def _accounts(session) -> dict[str, str]:
    """A programme, one account per role, and each account's API token (committed)."""
    if session.scalar(select(Programme).where(Programme.key == KEY)) is None:
        session.add(Programme(key=KEY, name="Programme"))
        session.flush()
    made = {
        "admin": create_account(session, "admin@example.org", PASSWORD, "admin"),
        "lead": create_account(
            session, "lead@example.org", PASSWORD, "programme_lead", programme_keys=[KEY]
        ),
        "evaluator": create_account(
            session, "eval@example.org", PASSWORD, "evaluator", programme_keys=[KEY]
        ),
    }
    tokens = {role: issue_token(session, account)[1] for role, account in made.items()}
    session.commit()
    return tokens


@pytest.fixture
def demo(app, session):
    """The demo programme run from baseline to end, with an account and token per role."""
    run_cycle(session, Outbound(app.config["CAREPULSE"], DevPhone(), DevMailbox()), utcnow())
    session.commit()
    return _accounts(session)


def _personal_strings(session, *extra: str) -> list[str]:
    people = session.scalars(select(Person)).all()
    found = [p.full_name for p in people]
    found += [p.email for p in people if p.email] + [p.mobile for p in people if p.mobile]
    return found + [s for s in extra if s]


def _assert_nothing_personal(session, *secrets: str) -> None:
    """No event's detail holds a name, contact, token or password; no target either, but
    for account emails (staff users, not care workers)."""
    events = _events(session)
    assert events
    personal = _personal_strings(session, *secrets)
    for event in events:
        stored = json.dumps(event.detail) + " " + (event.target or "")
        for value in personal:
            assert value not in stored, (event.action, value)
        assert not re.search(r"cp_[0-9a-f]{8}_", stored)


# --- signing in and out --------------------------------------------------------------------


def test_sign_in_sign_out_and_refused_sign_ins_are_recorded(app, client, session):
    _accounts(session)
    assert sign_in(client, "lead@example.org").status_code == 303
    event = _only(session, "sign_in")
    assert (event.actor, event.target, event.remote_addr) == ("lead@example.org", None, "127.0.0.1")

    page = client.get("/login").get_data(as_text=True)  # any page carries the logout token
    client.post("/logout", data={"csrf_token": csrf_token(page)})
    assert _only(session, "sign_out").actor == "lead@example.org"

    sign_in(client, "lead@example.org", "not the password at all")
    sign_in(client, "Margaret.Okafor@willowcourt.example", PASSWORD)
    known, unknown = _events(session, "sign_in_failed")
    assert (known.actor, known.target) == (None, "account:lead@example.org")
    assert (unknown.actor, unknown.target) == (None, None)
    secret = app.config["SECRET_KEY"]
    assert unknown.detail == {
        "address_digest": address_digest(secret, "margaret.okafor@willowcourt.example")
    }
    assert unknown.remote_addr == "127.0.0.1"
    for event in _events(session):
        stored = json.dumps(event.detail) + (event.target or "")
        assert "not the password" not in stored and "okafor" not in stored.lower()
    assert len(_events(session, "sign_in")) == 1


# --- the dashboard and the API ---------------------------------------------------------------


def test_dashboard_views_and_downloads_each_leave_one_event(app, session, demo):
    lead = app.test_client()
    sign_in(lead, "lead@example.org")
    query = "?home=Willow+Court"
    assert lead.get(f"/dashboard/{KEY}/{query}").status_code == 200
    view = _only(session, "report_view")
    assert (view.actor, view.target) == ("lead@example.org", f"programme:{KEY}")
    assert view.detail == {"pre": "baseline", "post": "end", "filters": {"home": "Willow Court"}}
    assert view.remote_addr == "127.0.0.1"

    assert lead.get(f"/dashboard/{KEY}/tables/prepost.csv{query}").status_code == 200
    [csv_export] = _events(session, "report_export")
    assert csv_export.detail["table"] == "prepost" and csv_export.detail["format"] == "csv"
    assert csv_export.detail["filters"] == {"home": "Willow Court"}
    assert lead.get(f"/dashboard/{KEY}/report.xlsx").status_code == 200
    xlsx = _events(session, "report_export")[-1]
    assert xlsx.detail == {
        "pre": "baseline",
        "post": "end",
        "filters": {},
        "format": "xlsx",
        "table": "all",
    }

    assert lead.get(f"/dashboard/{KEY}/wide.csv").status_code == 200
    wide = _only(session, "wide_export")
    assert (wide.actor, wide.target) == ("lead@example.org", f"programme:{KEY}")
    assert wide.detail["rows"] > 0

    subject = subjects_rated(session, KEY)[0]
    assert lead.get(f"/dashboard/{KEY}/managers/{subject}").status_code == 200
    seen = _only(session, "manager_report_view")
    assert (seen.actor, seen.target) == ("lead@example.org", f"person:{subject}")
    assert seen.detail == {"programme": KEY, "via": "dashboard"}

    from bot.manager_reports import report_token

    with app.test_request_context():
        link = f"/my-360/{report_token(KEY, subject)}"
    assert app.test_client().get(link).status_code == 200
    by_link = _events(session, "manager_report_view")[-1]
    assert by_link.actor is None and by_link.detail["via"] == "personal_link"
    # Charts are pictures of the page already recorded: they add no events.
    assert len(_events(session)) == 7  # sign_in + the six above
    _assert_nothing_personal(session, PASSWORD, *demo.values())


def test_refused_and_failed_requests_record_nothing(app, session, demo):
    evaluator = app.test_client()
    sign_in(evaluator, "eval@example.org")
    before = len(_events(session))
    assert evaluator.get(f"/dashboard/{KEY}/wide.csv").status_code == 403
    assert evaluator.get(f"/dashboard/{KEY}/?role=manager").status_code == 403
    assert evaluator.get(f"/dashboard/{KEY}/?pre=midway").status_code == 400
    assert len(_events(session)) == before


def test_api_pulls_name_the_table_filters_and_token_prefix_never_the_token(
    app, client, session, demo
):
    token = demo["evaluator"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get(f"/api/v1/programmes/{KEY}/report", headers=headers).status_code == 200
    pull = _only(session, "api_pull")
    assert (pull.actor, pull.target) == ("eval@example.org", f"programme:{KEY}")
    prefix = token.split("_")[1]
    assert pull.detail == {
        "pre": "baseline",
        "post": "end",
        "filters": {},
        "table": "all",
        "token_prefix": prefix,
    }
    path = f"/api/v1/programmes/{KEY}/tables/response_rates?home=Willow+Court"
    assert client.get(path, headers=headers).status_code == 200
    second = _events(session, "api_pull")[-1]
    assert second.detail["table"] == "response_rates"
    assert second.detail["filters"] == {"home": "Willow Court"}
    # A listing of programmes carries no figures; an unknown token is refused unrecorded.
    assert client.get("/api/v1/programmes", headers=headers).status_code == 200
    assert client.get(f"/api/v1/programmes/{KEY}/report").status_code == 401
    assert len(_events(session, "api_pull")) == 2
    _assert_nothing_personal(session, PASSWORD, *demo.values())


def test_a_filter_value_that_looks_personal_is_withheld_not_stored(app, session, demo):
    lead = app.test_client()
    sign_in(lead, "lead@example.org")
    typed = "margaret.okafor@willowcourt.example"
    # No home is called that: the report is refused before anything is read or recorded.
    assert lead.get(f"/dashboard/{KEY}/", query_string={"home": typed}).status_code == 400
    for event in _events(session):
        assert typed not in repr(event.detail) and typed not in (event.target or "")
    # A value that does name something, but looks personal, is withheld from the log.
    assert safe_text(typed) == "[withheld]"


def test_a_view_that_read_can_record_after_another_connection_wrote(engine, session):
    """On SQLite a transaction that read cannot write once another connection has written
    ("database is locked" at once); a page reads, answers keep arriving, and the page's
    audit event must still be written."""
    other = storage_db.make_sessionmaker(engine)()
    try:
        other.scalar(select(Programme.id))  # the request reads: its transaction begins
        record(session, "retention_purge", actor="system")  # meanwhile, another writer
        session.commit()
        record_after_reading(other, "report_view", actor="eval@example.org")
    finally:
        other.close()
    assert [e.action for e in _events(session)] == ["retention_purge", "report_view"]


# --- the console ----------------------------------------------------------------------------


def test_import_roster_and_load_programme_are_recorded_with_counts_not_rows(runner, session):
    assert runner.invoke(cli, ["import-roster", str(EXAMPLES / "roster.csv")]).exit_code == 0
    imported = _only(session, "roster_import")
    assert imported.actor == console_actor() and imported.target is None
    assert imported.detail["created"] == len(session.scalars(select(Person)).all())
    assert imported.detail["format"] == "csv" and len(imported.detail["file_sha256"]) == 64

    loaded = runner.invoke(cli, ["load-programme", str(EXAMPLES / "programme.yaml")])
    assert loaded.exit_code == 0, loaded.output
    event = _only(session, "programme_load")
    assert (event.actor, event.target) == (console_actor(), f"programme:{KEY}")
    assert event.detail["created"] > 0 and event.detail["updated"] == 0
    _assert_nothing_personal(session)


def test_a_refused_import_records_nothing(runner, session, tmp_path):
    bad = tmp_path / "roster.csv"
    bad.write_text("care_home,given_name\nWillow Court,\n", encoding="utf-8")
    assert runner.invoke(cli, ["import-roster", str(bad)]).exit_code != 0
    assert _events(session) == []


def test_report_files_wide_file_and_manager_links_are_recorded(runner, session, demo, tmp_path):
    out, wide = tmp_path / "out", tmp_path / "wide.csv"
    result = runner.invoke(cli, ["report", "--out", str(out), "--wide", str(wide)])
    assert result.exit_code == 0, result.output
    files = _only(session, "report_export")
    assert (files.actor, files.target) == (console_actor(), f"programme:{KEY}")
    written = int(re.search(r"wrote (\d+) files to", result.output).group(1))
    assert files.detail["format"] == "files" and files.detail["files"] == written
    assert set(files.detail) >= REPORT_DETAIL_KEYS
    assert _only(session, "wide_export").detail["rows"] > 0

    links = runner.invoke(cli, ["manager-links"])
    assert links.exit_code == 0, links.output
    event = _only(session, "manager_links")
    assert event.detail == {"links": len(subjects_rated(session, KEY))}
    assert "/my-360/" not in json.dumps(event.detail)
    # Printing the report alone exports nothing, and is not recorded as an export.
    assert runner.invoke(cli, ["report"]).exit_code == 0
    assert len(_events(session, "report_export")) == 1
    _assert_nothing_personal(session, *demo.values())


def test_user_commands_are_recorded_without_passwords_or_tokens(runner, session):
    session.add(Programme(key=KEY, name="Programme"))
    session.commit()
    email = "new.lead@example.org"
    add = ["user", "add", email, "--role", "programme_lead", "--programme", KEY]
    assert runner.invoke(cli, [*add, "--password-stdin"], input=PASSWORD + "\n").exit_code == 0
    added = _only(session, "account_add")
    assert (added.actor, added.target) == (console_actor(), f"account:{email}")
    assert added.detail == {"role": "programme_lead", "programmes": [KEY]}

    new_password = "another long passphrase"
    change = ["user", "password", email, "--password-stdin"]
    assert runner.invoke(cli, change, input=new_password + "\n").exit_code == 0
    assert _only(session, "account_password").target == f"account:{email}"

    issued = runner.invoke(cli, ["user", "token", email, "--label", "R analysis"])
    plaintext = re.search(r"cp_[0-9a-f]{8}_\S+", issued.output.split("\n", 1)[1]).group(0)
    prefix = plaintext.split("_")[1]
    token_event = _only(session, "token_issue")
    assert token_event.detail == {"token_prefix": prefix, "label": "R analysis"}
    assert runner.invoke(cli, ["user", "revoke", prefix]).exit_code == 0
    assert _only(session, "token_revoke").detail == {"token_prefix": prefix}
    # Revoking again changes nothing, and records nothing.
    assert runner.invoke(cli, ["user", "revoke", prefix]).exit_code == 0
    assert len(_events(session, "token_revoke")) == 1

    assert runner.invoke(cli, ["user", "remove", email]).exit_code == 0
    removed = _only(session, "account_remove")
    assert removed.target == f"account:{email}" and removed.detail == {"tokens_revoked": 0}
    _assert_nothing_personal(session, PASSWORD, new_password, plaintext)


# --- reading the log -------------------------------------------------------------------------


def _admin_client(app, session):
    _accounts(session)
    client = app.test_client()
    sign_in(client, "admin@example.org")
    return client


@pytest.mark.parametrize("role_email", ["lead@example.org", "eval@example.org"])
def test_only_admins_may_read_the_log(app, session, role_email):
    _accounts(session)
    client = app.test_client()
    assert client.get("/admin/audit").status_code in (302, 303)
    assert "/login" in client.get("/admin/audit.csv").headers["Location"]
    sign_in(client, role_email)
    assert client.get("/admin/audit").status_code == 403
    assert client.get("/admin/audit.csv").status_code == 403
    assert _events(session, "audit_export") == []


def test_the_admin_page_is_newest_first_paginated_and_filtered(app, session):
    client = _admin_client(app, session)
    for n in range(60):
        record(session, "report_view", actor="eval@example.org", target=f"programme:p{n}")
    record(session, "roster_import", actor="cli:ops", detail={"created": 3})
    session.commit()

    first = client.get("/admin/audit").get_data(as_text=True)
    assert "62 events, newest first" in first  # 60 + the import + the admin's sign-in
    assert first.index("roster_import") < first.index("programme:p59")
    assert "programme:p9<" not in first and "Older events" in first
    second = client.get("/admin/audit?page=2").get_data(as_text=True)
    assert "programme:p9<" in second and "Newer events" in second
    assert "programme:p59<" not in second

    only = client.get("/admin/audit?action=roster_import").get_data(as_text=True)
    assert "1 event, newest first" in only and "created: 3" in only
    assert "report_view</td>" not in only
    by_actor = client.get("/admin/audit?actor=admin@example.org").get_data(as_text=True)
    assert "1 event, newest first" in by_actor and "sign_in</td>" in by_actor
    empty = client.get("/admin/audit?since=2999-01-01").get_data(as_text=True)
    assert "0 events" in empty
    assert client.get("/admin/audit?action=dance").status_code == 400
    bad_date = client.get("/admin/audit?since=yesterday")
    assert bad_date.status_code == 400 and "YYYY-MM-DD" in bad_date.get_data(as_text=True)


def test_the_csv_export_is_filtered_neutralised_and_itself_recorded(app, session):
    client = _admin_client(app, session)
    record(session, "sign_in", actor='=HYPERLINK("http://evil.example")')
    record(session, "roster_import", actor="cli:ops", detail={"created": 3})
    session.commit()
    response = client.get("/admin/audit.csv?action=sign_in")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True).removeprefix("\ufeff"))))
    assert rows[0] == ["at", "actor", "action", "target", "remote_addr", "detail"]
    assert [r[2] for r in rows[1:]] == ["sign_in", "sign_in"]
    assert rows[1][1] == '\'=HYPERLINK("http://evil.example")'  # newest first, neutralised
    assert rows[2][1] == "admin@example.org"
    export = _only(session, "audit_export")
    assert export.actor == "admin@example.org"
    assert export.detail == {"action": "sign_in", "rows": 2}


def test_carepulse_audit_prints_filters_and_writes_csv(runner, session, tmp_path):
    import datetime as dt

    old = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    record(session, "sign_in", actor="lead@example.org", now=old)
    record(session, "roster_import", actor="cli:ops", detail={"created": 3})
    record(session, "api_pull", actor="eval@example.org", target=f"programme:{KEY}")
    session.commit()

    shown = runner.invoke(cli, ["audit"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    assert [line.split()[4] for line in lines[:3]] == ["api_pull", "roster_import", "sign_in"]
    assert "(3 of 3 events shown, newest first)" in shown.output
    recent = runner.invoke(cli, ["audit", "--since", "2026-06-01", "--action", "roster_import"])
    assert '{"created": 3}' in recent.output and "(1 of 1 events" in recent.output
    assert runner.invoke(cli, ["audit", "--action", "dance"]).exit_code == 2

    target = tmp_path / "audit.csv"
    written = runner.invoke(cli, ["audit", "--csv", str(target), "--actor", "eval@example.org"])
    assert written.exit_code == 0 and "wrote 1 audit events" in written.output
    rows = list(csv.reader(io.StringIO(target.read_text(encoding="utf-8-sig"))))
    assert [r[1] for r in rows[1:]] == ["eval@example.org"]
    export = _only(session, "audit_export")
    assert (export.actor, export.target) == (console_actor(), "actor:eval@example.org")
    assert export.detail == {"rows": 1}
