"""Accounts and API tokens: who may sign in to carepulse, and with what.

Passwords are hashed with argon2id (argon2-cffi's `PasswordHasher`, whose hash string
carries its own salt and parameters). API tokens look like `cp_<prefix>_<secret>`: the
prefix is public and names the token; the whole token is stored only as a SHA-256 hash
and shown to its owner once, when it is issued.

Every function here flushes and leaves committing to the caller, like the rest of
`storage`. Nothing here knows about Flask: the web layer (`bot.access`, `bot.auth`) and
the console (`bot.account_commands`) both sit on these functions.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
import secrets
from collections.abc import Iterable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Account, ApiToken, Programme, utcnow
from storage.vocabulary import ACCOUNT_ROLES

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
"""Longer passwords are refused before hashing, so a huge one cannot tie up a worker."""

TOKEN_PREFIX_BYTES = 4
TOKEN_SECRET_BYTES = 32
TOKEN_PATTERN = re.compile(r"cp_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")
"""`cp_`, 8 hex digits of public prefix, `_`, then 32 random bytes as urlsafe base64."""

LAST_USED_RESOLUTION = dt.timedelta(minutes=1)
"""`ApiToken.last_used_at` is kept to the minute: a write per API call would be wasted."""

_hasher = PasswordHasher()


class AccountError(ValueError):
    """A request about accounts that cannot be met; the message says what to change."""


def normalise_email(email: str) -> str:
    """The address as accounts store it: trimmed and lower-cased."""
    return email.strip().lower()


def _checked_email(email: str) -> str:
    address = normalise_email(email)
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise AccountError(f"{email!r} is not an email address: {exc}") from None
    return address


def check_password(password: str) -> None:
    """Raise AccountError unless `password` is long enough to be a password carepulse takes."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(
            f"the password is too short: use at least {MIN_PASSWORD_LENGTH} characters"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise AccountError(
            f"the password is too long: use at most {MAX_PASSWORD_LENGTH} characters"
        )


def programmes_by_key(session: Session, keys: Iterable[str]) -> list[Programme]:
    """The programmes with these keys, by key; AccountError naming any key not loaded."""
    wanted = sorted(set(keys))
    found = session.scalars(select(Programme).where(Programme.key.in_(wanted))).all()
    missing = [k for k in wanted if k not in {p.key for p in found}]
    if missing:
        known = session.scalars(select(Programme.key).order_by(Programme.key)).all()
        raise AccountError(
            f"unknown programme key {', '.join(map(repr, missing))}"
            f" (known: {', '.join(known) or 'none loaded yet'})"
        )
    return sorted(found, key=lambda p: p.key)


def find_account(session: Session, email: str) -> Account | None:
    """The account with this email address (in any case), active or not."""
    return session.scalar(select(Account).where(Account.email == normalise_email(email)))


def create_account(
    session: Session,
    email: str,
    password: str,
    role: str,
    *,
    name: str = "",
    programme_keys: Iterable[str] = (),
    now: dt.datetime | None = None,
) -> Account:
    """Create an active account; programme leads and evaluators see only `programme_keys`.

    Raises AccountError for a malformed email, an address that already has an account, an
    unknown role or programme key, programmes given to an admin, or a short password.
    """
    address = _checked_email(email)
    if role not in ACCOUNT_ROLES:
        raise AccountError(f"unknown role {role!r} (use one of: {', '.join(ACCOUNT_ROLES)})")
    keys = list(programme_keys)
    if role == "admin" and keys:
        raise AccountError("an admin sees every programme: give no programme")
    check_password(password)
    if find_account(session, address) is not None:
        raise AccountError(f"an account for {address} already exists")
    account = Account(
        email=address,
        name=name.strip(),
        role=role,
        password_hash=_hasher.hash(password),
        active=True,
        created_at=now or utcnow(),
    )
    account.programmes = programmes_by_key(session, keys)
    session.add(account)
    session.flush()
    return account


def set_password(session: Session, account: Account, password: str) -> None:
    """Replace the account's password (which also signs it out of every browser)."""
    check_password(password)
    account.password_hash = _hasher.hash(password)
    session.flush()


@functools.cache
def _decoy_hash() -> str:
    # Hashed once per process with the same parameters as real passwords, so checking a
    # password for an unknown address costs what checking a real one costs.
    return _hasher.hash(secrets.token_urlsafe(16))


def _password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_login(
    session: Session, email: str, password: str, now: dt.datetime | None = None
) -> Account | None:
    """The active account these credentials sign in to, or None.

    Every failure (unknown address, wrong password, removed account) returns the same
    None after the same argon2 work, so neither the answer nor its timing tells whether an
    address has an account. On success `last_login_at` is set, and a hash made with older
    parameters is upgraded.
    """
    if not password or len(password) > MAX_PASSWORD_LENGTH:
        return None
    account = find_account(session, email)
    matches = _password_matches(account.password_hash if account else _decoy_hash(), password)
    if account is None or not matches or not account.active:
        return None
    if _hasher.check_needs_rehash(account.password_hash):
        account.password_hash = _hasher.hash(password)
    account.last_login_at = now or utcnow()
    session.flush()
    return account


def _token_hash(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def _unused_prefix(session: Session) -> str:
    # 32 bits: a clash is rare, but the prefix is unique, so draw again rather than fail.
    while True:
        prefix = secrets.token_hex(TOKEN_PREFIX_BYTES)
        if session.scalar(select(ApiToken.id).where(ApiToken.prefix == prefix)) is None:
            return prefix


def issue_token(
    session: Session, account: Account, label: str = "", now: dt.datetime | None = None
) -> tuple[ApiToken, str]:
    """A new API token for an active account, and its plaintext: show it once, then forget it.

    Only the token's hash is stored; nobody can read the token back later.
    """
    if not account.active:
        raise AccountError(f"{account.email} has been removed: it cannot have tokens")
    prefix = _unused_prefix(session)
    plaintext = f"cp_{prefix}_{secrets.token_urlsafe(TOKEN_SECRET_BYTES)}"
    token = ApiToken(
        account=account,
        label=label.strip(),
        prefix=prefix,
        token_hash=_token_hash(plaintext),
        created_at=now or utcnow(),
    )
    session.add(token)
    session.flush()
    return token, plaintext


def find_token(session: Session, plaintext: str, now: dt.datetime | None = None) -> ApiToken | None:
    """The live token `plaintext` is, or None (malformed, unknown, revoked, account removed).

    Records the use in `last_used_at` (to the minute).
    """
    match = TOKEN_PATTERN.fullmatch(plaintext.strip())
    if match is None:
        return None
    token = session.scalar(select(ApiToken).where(ApiToken.prefix == match.group(1)))
    if token is None:
        return None
    # Constant-time: the prefix is public, the rest of the token is the secret.
    if not secrets.compare_digest(token.token_hash, _token_hash(match.group(0))):
        return None
    if token.revoked_at is not None or not token.account.active:
        return None
    now = now or utcnow()
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION:
        token.last_used_at = now
        session.flush()
    return token


def find_token_by_prefix(session: Session, prefix: str) -> ApiToken | None:
    """The token with this public prefix (`1a2b3c4d`, or `cp_1a2b3c4d` as shown), if any."""
    bare = prefix.strip().removeprefix("cp_").split("_", 1)[0].lower()
    return session.scalar(select(ApiToken).where(ApiToken.prefix == bare))


def revoke_token(session: Session, token: ApiToken, now: dt.datetime | None = None) -> bool:
    """Revoke the token; False when it already was (it keeps its first revocation time)."""
    if token.revoked_at is not None:
        return False
    token.revoked_at = now or utcnow()
    session.flush()
    return True


def remove_account(session: Session, account: Account, now: dt.datetime | None = None) -> int:
    """Deactivate the account and revoke its tokens; returns how many tokens were revoked.

    The row stays (what it did remains attributable); it can no longer sign in or call the
    API, and a browser already signed in is signed out at its next request.
    """
    now = now or utcnow()
    account.active = False
    revoked = sum(revoke_token(session, token, now) for token in account.tokens)
    session.flush()
    return revoked
