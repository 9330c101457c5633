"""Every route declares who may use it; the README's table is that declaration; and every
guarded route refuses everyone it must: anonymous visitors and every other role."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.access import route_matrix, route_table
from bot.cli import cli
from storage.accounts import create_account, issue_token
from storage.vocabulary import ACCOUNT_ROLES
from tests.support.web import PASSWORD, sign_in

README = Path(__file__).resolve().parents[2] / "README.md"
SAMPLE_ARGS = {
    "key": "prog",
    "table": "prepost",
    "name": "response_rates",
    "subject_id": 1,
    "person_id": 1,
    "token": "x" * 32,
    "number": 1,
    "filename": "carepulse.css",
}


def _url(rule: str) -> str:
    def fill(match: re.Match[str]) -> str:
        return str(SAMPLE_ARGS[match.group(1)])

    return re.sub(r"<(?:\w+:)?(\w+)>", fill, rule)


def test_every_route_declares_who_may_use_it(app):
    undeclared = [row.rule for row in route_matrix(app) if row.access is None]
    assert undeclared == []


def test_the_readme_table_is_the_code_s_matrix(app, runner):
    table = route_table(app)
    assert table in README.read_text(encoding="utf-8"), (
        "README's route table is out of date; paste the output of `carepulse routes`"
    )
    printed = runner.invoke(cli, ["routes"])
    assert printed.exit_code == 0 and printed.output.strip() == table


def _guarded(app, by: str):
    return [row for row in route_matrix(app) if row.access and row.access.by == by]


def test_pages_refuse_visitors_and_every_role_not_listed(app, session):
    accounts = {
        role: create_account(session, f"{role}@example.org", PASSWORD, role, programme_keys=[])
        if role == "admin"
        else create_account(session, f"{role}@example.org", PASSWORD, role)
        for role in ACCOUNT_ROLES
    }
    session.commit()
    pages = _guarded(app, "signed-in account")
    assert pages, "no guarded pages found"
    visitor = app.test_client()
    for row in pages:
        for method in row.methods:
            response = visitor.open(_url(row.rule), method=method)
            assert response.status_code == 302, (row.rule, method)
            assert "/login" in response.headers["Location"]
    for role in accounts:
        client = app.test_client()
        _signed_in(client, f"{role}@example.org")
        for row in pages:
            if role in row.access.roles:
                continue
            for method in row.methods:
                response = client.open(_url(row.rule), method=method)
                assert response.status_code == 403, (role, row.rule, method)


def test_the_api_refuses_missing_and_wrong_role_tokens(app, session):
    tokens = {}
    for role in ACCOUNT_ROLES:
        account = create_account(session, f"api-{role}@example.org", PASSWORD, role)
        tokens[role] = issue_token(session, account)[1]
    session.commit()
    client = app.test_client()
    for row in _guarded(app, "API token"):
        assert client.get(_url(row.rule)).status_code == 401, row.rule
        for role, token in tokens.items():
            if role in row.access.roles:
                continue
            response = client.get(_url(row.rule), headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 403, (role, row.rule)


@pytest.mark.parametrize("role", ["evaluator"])
def test_an_evaluator_is_sent_to_the_reports_not_the_start_page(app, session, role):
    create_account(session, "e@example.org", PASSWORD, role)
    session.commit()
    client = app.test_client()
    done = sign_in(client, "e@example.org")
    assert done.headers["Location"].endswith("/dashboard/")
    assert client.get("/").status_code == 403


def _signed_in(client, email: str) -> None:
    assert sign_in(client, email).status_code == 303
