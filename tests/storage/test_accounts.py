"""Accounts and API tokens: hashed secrets, one answer for every failed sign-in, scopes."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from storage.accounts import (
    AccountError,
    create_account,
    find_token,
    find_token_by_prefix,
    issue_token,
    remove_account,
    revoke_token,
    set_password,
    verify_login,
)
from storage.models import Account, ApiToken, Programme

PASSWORD = "correct horse battery"
NOW = dt.datetime(2027, 3, 1, 9, 30, tzinfo=dt.UTC)


def _programme(session, key: str) -> Programme:
    programme = Programme(key=key, name=key.title())
    session.add(programme)
    session.flush()
    return programme


def _row_values(session, table: str) -> list[str]:
    """Every value stored in `table`, as text: what someone reading the database sees."""
    rows = session.execute(text(f"SELECT * FROM {table}")).all()
    return [str(value) for row in rows for value in row]


def test_password_is_stored_only_as_an_argon2_hash(session):
    account = create_account(session, " Eve@Example.ORG ", PASSWORD, "admin", name="Eve")
    assert account.email == "eve@example.org"
    assert account.password_hash.startswith("$argon2id$")
    assert not any(PASSWORD in value for value in _row_values(session, "accounts"))
    assert PasswordHasher().verify(account.password_hash, PASSWORD)


def test_verify_login_accepts_the_password_in_any_case_of_email_and_records_the_time(session):
    create_account(session, "lead@example.org", PASSWORD, "admin")
    account = verify_login(session, "LEAD@example.org ", PASSWORD, now=NOW)
    assert account is not None and account.email == "lead@example.org"
    assert account.last_login_at == NOW


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("lead@example.org", "wrong password!!"),
        ("nobody@example.org", PASSWORD),
        ("lead@example.org", ""),
        ("lead@example.org", "x" * 5000),
    ],
)
def test_every_failed_login_is_the_same_none(session, email, password):
    create_account(session, "lead@example.org", PASSWORD, "admin")
    assert verify_login(session, email, password) is None
    assert session.scalar(select(Account.last_login_at)) is None


def test_an_unknown_address_costs_one_argon2_check_like_a_known_one(session, monkeypatch):
    create_account(session, "lead@example.org", PASSWORD, "admin")
    checks = []
    real_verify = PasswordHasher.verify

    def counting_verify(self, hash, password):
        checks.append(hash)
        return real_verify(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting_verify)
    verify_login(session, "lead@example.org", "wrong password!!")
    verify_login(session, "nobody@example.org", "wrong password!!")
    assert len(checks) == 2
    # Both hashes have the same parameters, so both checks cost the same.
    assert checks[0].split("$")[1:4] == checks[1].split("$")[1:4]


def test_a_removed_account_cannot_sign_in_even_with_the_right_password(session):
    account = create_account(session, "lead@example.org", PASSWORD, "admin")
    remove_account(session, account)
    assert verify_login(session, "lead@example.org", PASSWORD) is None


def test_set_password_replaces_the_old_one(session):
    account = create_account(session, "lead@example.org", PASSWORD, "admin")
    set_password(session, account, "a brand new passphrase")
    assert verify_login(session, "lead@example.org", PASSWORD) is None
    assert verify_login(session, "lead@example.org", "a brand new passphrase") is not None
    with pytest.raises(AccountError, match="at least 12"):
        set_password(session, account, "short")


def test_a_hash_made_with_weaker_parameters_is_upgraded_at_sign_in(session):
    account = create_account(session, "lead@example.org", PASSWORD, "admin")
    account.password_hash = PasswordHasher(time_cost=1, memory_cost=8192).hash(PASSWORD)
    session.flush()
    assert verify_login(session, "lead@example.org", PASSWORD) is not None
    assert not PasswordHasher().check_needs_rehash(account.password_hash)
    assert verify_login(session, "lead@example.org", PASSWORD) is not None


def test_programme_leads_and_evaluators_are_scoped_to_their_programmes(session):
    _programme(session, "alpha")
    _programme(session, "beta")
    lead = create_account(
        session, "lead@example.org", PASSWORD, "programme_lead", programme_keys=["beta", "alpha"]
    )
    assert [p.key for p in lead.programmes] == ["alpha", "beta"]


@pytest.mark.parametrize(
    ("email", "role", "keys", "password", "message"),
    [
        ("a@example.org", "superuser", (), PASSWORD, "unknown role 'superuser'"),
        ("a@example.org", "evaluator", ("alpha", "nope"), PASSWORD, "unknown programme key 'nope'"),
        ("a@example.org", "admin", ("alpha",), PASSWORD, "an admin sees every programme"),
        ("a@example.org", "admin", (), "eleven char", "at least 12 characters"),
        ("not an address", "admin", (), PASSWORD, "is not an email address"),
        ("TAKEN@example.org", "admin", (), PASSWORD, "already exists"),
    ],
)
def test_create_account_refuses_what_it_cannot_store(session, email, role, keys, password, message):
    _programme(session, "alpha")
    create_account(session, "taken@example.org", PASSWORD, "admin")
    with pytest.raises(AccountError, match=message):
        create_account(session, email, password, role, programme_keys=keys)
    assert session.scalar(select(Account.email).where(Account.email == "a@example.org")) is None


@pytest.mark.parametrize(
    ("column", "value"), [("role", "superuser"), ("email", "Mixed@Example.org")]
)
def test_the_database_refuses_unknown_roles_and_upper_case_emails(session, column, value):
    values = {"email": "x@example.org", "role": "admin", "name": "", "password_hash": "h"}
    values[column] = value
    session.add(Account(**values))
    with pytest.raises(IntegrityError):
        session.flush()


def test_a_token_is_shown_once_and_stored_only_as_its_hash(session):
    account = create_account(session, "eval@example.org", PASSWORD, "admin")
    token, plaintext = issue_token(session, account, "R analysis", now=NOW)
    assert plaintext.startswith(f"cp_{token.prefix}_") and len(plaintext) == 3 + 8 + 1 + 43
    assert token.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    secret = plaintext.rsplit("_", 1)[-1][-20:]
    assert not any(secret in value for value in _row_values(session, "api_tokens"))
    assert token.label == "R analysis" and token.created_at == NOW


def test_find_token_finds_a_live_token_and_records_its_use(session):
    account = create_account(session, "eval@example.org", PASSWORD, "admin")
    token, plaintext = issue_token(session, account)
    assert token.last_used_at is None
    found = find_token(session, plaintext, now=NOW)
    assert found is token and found.account is account
    assert token.last_used_at == NOW


def test_find_token_refuses_malformed_forged_revoked_and_orphaned_tokens(session):
    account = create_account(session, "eval@example.org", PASSWORD, "admin")
    token, plaintext = issue_token(session, account)
    forged = plaintext[:-4] + ("AAAA" if not plaintext.endswith("AAAA") else "BBBB")
    for wrong in (
        "",
        "cp_",
        "Bearer " + plaintext,
        plaintext + "x",
        forged,
        "cp_00000000_" + "A" * 43,
    ):
        assert find_token(session, wrong) is None, wrong
    assert find_token(session, plaintext) is token
    assert revoke_token(session, token) is True
    assert revoke_token(session, token) is False
    assert find_token(session, plaintext) is None

    other, other_plaintext = issue_token(session, account)
    account.active = False
    assert find_token(session, other_plaintext) is None


def test_remove_account_deactivates_it_and_revokes_every_token(session):
    account = create_account(session, "eval@example.org", PASSWORD, "admin")
    first, _ = issue_token(session, account)
    second, _ = issue_token(session, account)
    revoke_token(session, first, now=NOW)
    assert remove_account(session, account) == 1
    assert account.active is False
    assert first.revoked_at == NOW and second.revoked_at is not None
    with pytest.raises(AccountError, match="removed"):
        issue_token(session, account)


def test_tokens_are_found_by_their_public_prefix(session):
    account = create_account(session, "eval@example.org", PASSWORD, "admin")
    token, _ = issue_token(session, account)
    assert find_token_by_prefix(session, token.prefix) is token
    assert find_token_by_prefix(session, f"cp_{token.prefix}") is token
    assert find_token_by_prefix(session, "ffffffff" if token.prefix != "ffffffff" else "0") is None
    assert session.scalar(select(ApiToken.prefix)) == token.prefix
