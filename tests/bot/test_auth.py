"""Signing in and out, page and API access by role, and `carepulse user` commands."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import g, jsonify
from sqlalchemy import select

from bot.access import (
    can_see_programme,
    programme_keys_for,
    require_api_role,
    require_role,
)
from bot.account_commands import user_group
from bot.demo import create_demo_accounts
from storage.accounts import create_account, find_token, issue_token, remove_account, set_password
from storage.models import Account, ApiToken, Programme
from tests.support.web import PASSWORD, csrf_token


def _fresh(session):
    """End the test's transaction and forget loaded rows, to see what the app committed."""
    session.rollback()
    session.expire_all()


def _accounts(session):
    """A programme, and an admin, a lead and an evaluator of it (committed for the app)."""
    session.add(Programme(key="alpha", name="Alpha"))
    session.add(Programme(key="beta", name="Beta"))
    session.flush()
    made = {
        "admin": create_account(session, "admin@example.org", PASSWORD, "admin", name="Ada"),
        "lead": create_account(
            session, "lead@example.org", PASSWORD, "programme_lead", programme_keys=["alpha"]
        ),
        "evaluator": create_account(
            session, "eval@example.org", PASSWORD, "evaluator", programme_keys=["alpha"]
        ),
    }
    session.commit()
    return made


def _sign_in(client, email: str, password: str = PASSWORD, next_url: str | None = None):
    page = client.get("/login" + (f"?next={next_url}" if next_url else ""))
    form = {
        "csrf_token": csrf_token(page.get_data(as_text=True)),
        "email": email,
        "password": password,
    }
    if next_url is not None:
        form["next"] = next_url
    return client.post("/login", data=form)


@pytest.fixture
def guarded_app(app):
    """The app with test-only pages and JSON routes behind each access decorator."""

    @require_role("programme_lead")
    def leads_page():
        return f"hello {g.account.email}"

    @require_api_role("evaluator")
    def evaluator_api():
        keys = programme_keys_for(g.account)
        return jsonify(email=g.account.email, programmes="all" if keys is None else sorted(keys))

    app.add_url_rule("/test/leads", view_func=leads_page)
    app.add_url_rule("/test/api", view_func=evaluator_api)
    return app


# --- signing in -------------------------------------------------------------------------


def test_the_sign_in_page_is_a_labelled_form_with_a_csrf_token(client):
    page = client.get("/login")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert '<label class="label" for="email">Email address</label>' in html
    assert 'autocomplete="current-password"' in html
    assert len(csrf_token(html)) >= 32
    assert page.headers["Cache-Control"] == "no-store"


def test_signing_in_goes_to_the_start_page_and_shows_who_is_signed_in(client, session):
    _accounts(session)
    response = _sign_in(client, "ADMIN@example.org")
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    home = client.get("/").get_data(as_text=True)
    assert "Signed in as Ada" in home and "Sign out" in home
    _fresh(session)
    assert session.scalar(select(Account.last_login_at).where(Account.role == "admin"))


def test_a_wrong_password_and_an_unknown_address_get_the_same_page(client, session):
    _accounts(session)
    wrong = _sign_in(client, "admin@example.org", "not the password")
    unknown = _sign_in(client, "nobody@example.org", "not the password")
    assert wrong.status_code == unknown.status_code == 200

    def error_part(response):
        html = response.get_data(as_text=True)
        return html[html.index('<div class="error-summary"') : html.index("<form")]

    assert error_part(wrong) == error_part(unknown)
    assert "Enter a correct email address and password" in error_part(wrong)
    assert 'href="#email"' in error_part(wrong)
    with client.session_transaction() as cookie:
        assert "account_id" not in cookie


def test_empty_fields_are_named_in_the_error_summary(client):
    page = client.get("/login")
    response = client.post("/login", data={"csrf_token": csrf_token(page.get_data(as_text=True))})
    html = response.get_data(as_text=True)
    assert "Error: Sign in" in html
    assert '<a href="#email">Enter your email address</a>' in html
    assert '<a href="#password">Enter your password</a>' in html


def test_a_sign_in_without_the_csrf_token_is_refused(client, session):
    _accounts(session)
    client.get("/login")
    response = client.post("/login", data={"email": "admin@example.org", "password": PASSWORD})
    assert response.status_code == 400
    assert "This page has expired" in response.get_data(as_text=True)
    with client.session_transaction() as cookie:
        assert "account_id" not in cookie


def test_signing_in_starts_a_fresh_lasting_session(client, session):
    _accounts(session)
    page = client.get("/login")
    with client.session_transaction() as cookie:
        cookie["survey_invitation"] = 12345
        planted_csrf = cookie["account_csrf"]
    form = {"csrf_token": csrf_token(page.get_data(as_text=True)), "email": "admin@example.org"}
    response = client.post("/login", data={**form, "password": PASSWORD})
    assert "Expires=" in response.headers["Set-Cookie"]
    with client.session_transaction() as cookie:
        assert "survey_invitation" not in cookie
        assert cookie.get("account_csrf") != planted_csrf
        assert cookie["account_id"]


@pytest.mark.parametrize(
    ("asked", "lands"),
    [
        ("/test/leads?x=1", "/test/leads?x=1"),
        ("//evil.example/", "/"),
        ("///evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("/%0d%0aSet-Cookie:x=1", "/%0d%0aSet-Cookie:x=1"),
        ("/\tevil", "/"),
        ("evil.example", "/"),
    ],
)
def test_after_sign_in_only_paths_on_this_site_are_followed(client, session, asked, lands):
    _accounts(session)
    page = client.get("/login")
    response = client.post(
        "/login",
        data={
            "csrf_token": csrf_token(page.get_data(as_text=True)),
            "email": "admin@example.org",
            "password": PASSWORD,
            "next": asked,
        },
    )
    assert response.status_code == 303
    assert response.headers["Location"] == lands


def test_signing_out_needs_the_csrf_token_then_ends_the_session(guarded_app, session):
    client = guarded_app.test_client()
    _accounts(session)
    _sign_in(client, "lead@example.org")
    assert client.get("/logout").status_code == 405
    assert client.post("/logout").status_code == 400
    page = client.get("/test/leads")
    assert page.status_code == 200

    home = client.get("/").get_data(as_text=True)
    out = client.post("/logout", data={"csrf_token": csrf_token(home)})
    assert out.status_code == 303 and out.headers["Location"] == "/login"
    assert "You have signed out." in client.get("/login").get_data(as_text=True)
    assert client.get("/test/leads").status_code == 302


# --- pages and API by role --------------------------------------------------------------


def test_a_page_sends_a_visitor_to_sign_in_and_back(guarded_app, session):
    client = guarded_app.test_client()
    _accounts(session)
    response = client.get("/test/leads?week=3")
    assert response.status_code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/login"
    assert parse_qs(location.query) == {"next": ["/test/leads?week=3"]}
    back = _sign_in(client, "lead@example.org", next_url="/test/leads?week=3")
    assert back.headers["Location"] == "/test/leads?week=3"
    page = client.get("/test/leads?week=3")
    assert page.get_data(as_text=True) == "hello lead@example.org"
    assert "no-store" in page.headers["Cache-Control"]


def test_a_page_refuses_the_wrong_role_and_admits_an_admin(guarded_app, session):
    _accounts(session)
    evaluator = guarded_app.test_client()
    _sign_in(evaluator, "eval@example.org")
    refused = evaluator.get("/test/leads")
    assert refused.status_code == 403
    assert "Forbidden" in refused.get_data(as_text=True)
    admin = guarded_app.test_client()
    _sign_in(admin, "admin@example.org")
    assert admin.get("/test/leads").status_code == 200


def test_a_new_password_or_removal_signs_the_browser_out(guarded_app, session):
    made = _accounts(session)
    client = guarded_app.test_client()
    _sign_in(client, "lead@example.org")
    assert client.get("/test/leads").status_code == 200
    set_password(session, made["lead"], "another long passphrase")
    session.commit()
    assert client.get("/test/leads").status_code == 302

    _sign_in(client, "lead@example.org", "another long passphrase")
    assert client.get("/test/leads").status_code == 200
    remove_account(session, made["lead"])
    session.commit()
    assert client.get("/test/leads").status_code == 302


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_api_needs_a_live_token_of_an_allowed_role(guarded_app, session):
    made = _accounts(session)
    _, evaluator_token = issue_token(session, made["evaluator"])
    _, lead_token = issue_token(session, made["lead"])
    session.commit()
    client = guarded_app.test_client()

    missing = client.get("/test/api")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in missing.get_json()["error"]

    invalid = client.get("/test/api", headers=_bearer(evaluator_token[:-1] + "x"))
    assert invalid.status_code == 401 and "not valid" in invalid.get_json()["error"]
    assert 'error="invalid_token"' in invalid.headers["WWW-Authenticate"]
    assert client.get("/test/api", headers={"Authorization": "Basic abc"}).status_code == 401

    wrong_role = client.get("/test/api", headers=_bearer(lead_token))
    assert wrong_role.status_code == 403
    assert "programme_lead" in wrong_role.get_json()["error"]

    ok = client.get("/test/api", headers=_bearer(evaluator_token))
    assert ok.status_code == 200
    assert ok.get_json() == {"email": "eval@example.org", "programmes": ["alpha"]}
    _fresh(session)
    assert session.scalar(
        select(ApiToken.last_used_at).where(ApiToken.account_id == made["evaluator"].id)
    )


def test_the_api_refuses_a_revoked_token_and_a_removed_account(guarded_app, session):
    made = _accounts(session)
    revoked, revoked_token = issue_token(session, made["evaluator"])
    revoked.revoked_at = revoked.created_at
    _, admin_token = issue_token(session, made["admin"])
    session.commit()
    client = guarded_app.test_client()
    assert client.get("/test/api", headers=_bearer(revoked_token)).status_code == 401
    assert client.get("/test/api", headers=_bearer(admin_token)).status_code == 200
    remove_account(session, made["admin"])
    session.commit()
    assert client.get("/test/api", headers=_bearer(admin_token)).status_code == 401


def test_programme_scope_by_role(session):
    made = _accounts(session)
    assert programme_keys_for(made["admin"]) is None
    assert programme_keys_for(made["lead"]) == {"alpha"}
    assert can_see_programme(made["admin"], "beta")
    assert can_see_programme(made["evaluator"], "alpha")
    assert not can_see_programme(made["evaluator"], "beta")
    assert not can_see_programme(None, "alpha")
    remove_account(session, made["lead"])
    assert programme_keys_for(made["lead"]) == set()


def test_an_unknown_role_in_a_decorator_fails_at_once():
    with pytest.raises(ValueError, match="roles must be"):
        require_role("evaluater")
    with pytest.raises(ValueError, match="roles must be"):
        require_api_role()


# --- carepulse user ----------------------------------------------------------------------


def _programmes(session, *keys):
    for key in keys:
        session.add(Programme(key=key, name=key.title()))
    session.commit()


def test_user_add_asks_for_the_password_twice_and_stores_only_its_hash(runner, session):
    _programmes(session, "alpha")
    typed = f"short\n{PASSWORD}\n{PASSWORD}\n"
    result = runner.invoke(
        user_group,
        ["add", "Lead@Example.org", "--role", "programme_lead", "--programme", "alpha"],
        input=typed,
    )
    assert result.exit_code == 0, result.output
    assert "at least 12 characters" in result.output  # "short" was asked again
    assert "created lead@example.org (programme_lead; sees alpha)" in result.output
    _fresh(session)
    account = session.scalar(select(Account))
    assert account.password_hash.startswith("$argon2id$") and PASSWORD not in account.password_hash


def test_user_add_reads_the_password_from_stdin(runner, session):
    result = runner.invoke(
        user_group, ["add", "a@example.org", "--role", "admin", "--password-stdin"], input=PASSWORD
    )
    assert result.exit_code == 0, result.output
    assert "sees every programme" in result.output
    short = runner.invoke(
        user_group, ["add", "b@example.org", "--role", "admin", "--password-stdin"], input="short\n"
    )
    assert short.exit_code == 1 and "at least 12 characters" in short.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--role", "superuser"], 2, "'superuser' is not one of 'admin', 'programme_lead'"),
        (["--role", "evaluator", "--programme", "nope"], 1, "unknown programme key 'nope'"),
        (["--role", "evaluator"], 2, "say which programme this evaluator sees"),
        (["--role", "admin", "--programme", "alpha"], 2, "an admin sees every programme"),
    ],
)
def test_user_add_names_the_problem(runner, session, args, code, message):
    _programmes(session, "alpha")
    result = runner.invoke(
        user_group, ["add", "x@example.org", *args, "--password-stdin"], input=PASSWORD
    )
    assert result.exit_code == code
    assert message in result.output
    assert isinstance(result.exception, SystemExit)  # a message, not a crash
    _fresh(session)
    assert session.scalar(select(Account)) is None


def test_user_add_refuses_an_unknown_programme_before_asking_for_a_password(runner, session):
    _programmes(session, "alpha")
    args = ["add", "x@example.org", "--role", "evaluator", "--programme", "nope"]
    result = runner.invoke(user_group, args)
    assert result.exit_code == 1
    assert "unknown programme key 'nope' (known: alpha)" in result.output
    assert "Password" not in result.output


def test_user_add_refuses_a_duplicate_email(runner, session):
    _accounts(session)
    result = runner.invoke(
        user_group,
        ["add", "ADMIN@example.org", "--role", "admin", "--password-stdin"],
        input=PASSWORD,
    )
    assert result.exit_code == 1
    assert "an account for admin@example.org already exists" in result.output


def test_user_token_prints_the_token_once_and_keeps_only_its_hash(runner, session):
    _accounts(session)
    result = runner.invoke(user_group, ["token", "eval@example.org", "--label", "R analysis"])
    assert result.exit_code == 0, result.output
    assert "it will not be shown again" in result.output
    plaintext = re.search(r"cp_[0-9a-f]{8}_\S+", result.output).group(0)
    _fresh(session)
    stored = session.scalar(select(ApiToken))
    assert stored.label == "R analysis" and plaintext not in stored.token_hash
    assert find_token(session, plaintext) is not None

    listed = runner.invoke(user_group, ["list"])
    assert listed.exit_code == 0
    assert f"cp_{stored.prefix}" in listed.output and "R analysis" in listed.output
    assert plaintext not in listed.output and stored.token_hash not in listed.output
    assert "$argon2" not in listed.output


def test_user_revoke_by_prefix_stops_the_token(runner, session):
    made = _accounts(session)
    token, plaintext = issue_token(session, made["evaluator"])
    session.commit()
    result = runner.invoke(user_group, ["revoke", f"cp_{token.prefix}"])
    assert result.exit_code == 0, result.output
    assert f"revoked token cp_{token.prefix} of eval@example.org" in result.output
    _fresh(session)
    assert find_token(session, plaintext) is None
    again = runner.invoke(user_group, ["revoke", token.prefix])
    assert again.exit_code == 0 and "already revoked" in again.output
    unknown = runner.invoke(
        user_group, ["revoke", "deadbeef" if token.prefix != "deadbeef" else "0"]
    )
    assert unknown.exit_code == 1 and "no API token with prefix" in unknown.output


def test_user_remove_stops_sign_in_and_revokes_tokens(runner, session):
    made = _accounts(session)
    issue_token(session, made["lead"])
    session.commit()
    result = runner.invoke(user_group, ["remove", "lead@example.org"])
    assert result.exit_code == 0, result.output
    assert "1 API token(s) revoked" in result.output
    listed = runner.invoke(user_group, ["list"])
    assert "lead@example.org [removed]" in listed.output
    missing = runner.invoke(user_group, ["remove", "ghost@example.org"])
    assert missing.exit_code == 1 and "no account for ghost@example.org" in missing.output


def test_user_password_sets_a_new_password(runner, session, client):
    _accounts(session)
    result = runner.invoke(
        user_group,
        ["password", "lead@example.org", "--password-stdin"],
        input="another long passphrase\n",
    )
    assert result.exit_code == 0, result.output
    assert _sign_in(client, "lead@example.org").status_code == 200  # old one refused
    assert _sign_in(client, "lead@example.org", "another long passphrase").status_code == 303


# --- the demo ------------------------------------------------------------------------------


def test_demo_accounts_are_made_once_and_can_sign_in(client, session):
    _programmes(session, "nwl-leadership-2027")
    made = create_demo_accounts(session)
    session.commit()
    assert made is not None and len(made.password) >= 12
    assert made.password in made.summary() and "evaluator@example.org" in made.summary()
    assert create_demo_accounts(session) is None
    lead = session.scalar(select(Account).where(Account.email == "lead@example.org"))
    assert lead.role == "programme_lead"
    assert [p.key for p in lead.programmes] == ["nwl-leadership-2027"]
    assert _sign_in(client, "evaluator@example.org", made.password).status_code == 303
