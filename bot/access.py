"""Who is signed in, and what they may see.

Pages sign people in with Flask's signed session cookie (see `bot.auth`); the JSON API
takes `Authorization: Bearer cp_...` tokens (see `storage.accounts`). Views say who may use
them with `require_role` (pages) or `require_api_role` (JSON); both put the account on
`flask.g.account`. An admin passes every role check. Which programmes an account may see
is `programme_keys_for` / `can_see_programme`: a view showing a programme must ask.

The session remembers the account's id and a fingerprint of its password hash, and the
account is read again on every request: removing an account or changing its password
signs it out of every browser at their next request.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import (
    Flask,
    abort,
    after_this_request,
    g,
    jsonify,
    redirect,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response as WebResponse

from bot.db import get_session
from storage.accounts import find_token
from storage.models import Account, ApiToken
from storage.vocabulary import ACCOUNT_ROLES

SESSION_ACCOUNT = "account_id"
SESSION_CHECK = "account_check"
_CACHE = "_carepulse_current_account"

View = TypeVar("View", bound=Callable[..., Any])


def _fingerprint(account: Account) -> str:
    # A digest, not the hash itself: the cookie is signed but readable by its holder.
    return hashlib.sha256(account.password_hash.encode()).hexdigest()[:32]


def sign_in(account: Account) -> None:
    """Start a fresh session for `account`: whatever the session held before is dropped."""
    # Clearing first means nothing set before sign-in (by anyone who could plant a cookie)
    # survives into the signed-in session, including the old CSRF tokens.
    session.clear()
    session.permanent = True
    session[SESSION_ACCOUNT] = account.id
    session[SESSION_CHECK] = _fingerprint(account)
    g.pop(_CACHE, None)


def sign_out() -> None:
    """End the session: the browser is no longer signed in."""
    session.clear()
    g.pop(_CACHE, None)


def _load_signed_in() -> Account | None:
    account_id = session.get(SESSION_ACCOUNT)
    if not isinstance(account_id, int):
        return None
    account = get_session().get(Account, account_id)
    if account is None or not account.active or session.get(SESSION_CHECK) != _fingerprint(account):
        # Removed, or the password changed since this browser signed in.
        session.pop(SESSION_ACCOUNT, None)
        session.pop(SESSION_CHECK, None)
        return None
    return account


def current_account() -> Account | None:
    """The active account signed in to this browser's session, or None."""
    if _CACHE not in g:
        setattr(g, _CACHE, _load_signed_in())
    return getattr(g, _CACHE)


def _check_roles(roles: tuple[str, ...]) -> None:
    # A typo in a decorator would lock everyone but admins out: fail at import instead.
    unknown = [r for r in roles if r not in ACCOUNT_ROLES]
    if not roles or unknown:
        raise ValueError(f"roles must be some of {ACCOUNT_ROLES}, not {roles!r}")


def has_role(account: Account, roles: tuple[str, ...]) -> bool:
    """Whether the account's role is one of `roles` (an admin always is)."""
    return account.role == "admin" or account.role in roles


def _here() -> str:
    path = request.script_root + request.path
    return f"{path}?{request.query_string.decode('latin-1')}" if request.query_string else path


def _private(response: WebResponse) -> WebResponse:
    # What a signed-in person sees must not be kept by a shared cache or the browser's.
    response.headers["Cache-Control"] = "private, no-store"
    response.vary.add("Cookie")
    return response


def require_role(*roles: str) -> Callable[[View], View]:
    """Decorate a page so only signed-in accounts with one of `roles` (or admins) see it.

    Not signed in: a redirect to /login that comes back here. Signed in with another
    role: the 403 page.
    """
    _check_roles(roles)

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            account = current_account()
            if account is None:
                return redirect(url_for("auth.login", next=_here()))
            if not has_role(account, roles):
                abort(403)
            g.account = account
            after_this_request(_private)
            return view(*args, **kwargs)

        setattr(guarded, ACCESS_ATTRIBUTE, Access("signed-in account", _with_admin(roles)))
        return guarded  # type: ignore[return-value]

    return decorate


def _api_error(status: int, message: str, token_error: str | None = None) -> WebResponse:
    response = jsonify({"error": message, "status": status})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    if status == 401:
        # RFC 6750: say which scheme to use, and whether the token given was the problem.
        challenge = 'Bearer realm="carepulse"'
        if token_error:
            challenge += f', error="{token_error}"'
        response.headers["WWW-Authenticate"] = challenge
    return response


def _bearer_token() -> tuple[ApiToken | None, str | None]:
    """The live token in the Authorization header, or None and what was wrong."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if not header or scheme.lower() != "bearer" or not value.strip():
        return None, None
    return find_token(get_session(), value.strip()), "invalid_token"


def require_api_role(*roles: str) -> Callable[[View], View]:
    """Decorate a JSON view so only bearer tokens of accounts with one of `roles` may call it.

    No token: 401. A malformed, unknown or revoked token, or one of a removed account:
    401. A live token whose account has another role: 403. Each with `{"error": ...}`.
    """
    _check_roles(roles)

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            token, problem = _bearer_token()
            if token is None and problem is None:
                return _api_error(401, "send an API token: Authorization: Bearer cp_...")
            if token is None:
                return _api_error(
                    401, "the API token is not valid (mistyped, revoked or expired)", problem
                )
            if not has_role(token.account, roles):
                return _api_error(
                    403,
                    f"a {token.account.role} account may not use this (needs: "
                    f"{' or '.join(roles)})",
                )
            # Keep the token's last use even if the view fails later.
            get_session().commit()
            g.account, g.api_token = token.account, token
            return view(*args, **kwargs)

        setattr(guarded, ACCESS_ATTRIBUTE, Access("API token", _with_admin(roles)))
        return guarded  # type: ignore[return-value]

    return decorate


# --- the route matrix ----------------------------------------------------------------------

ACCESS_ATTRIBUTE = "carepulse_access"


@dataclass(frozen=True)
class Access:
    """Who may use a route: `by` says how they are recognised, `roles` which account roles
    (empty: no account involved)."""

    by: str
    roles: tuple[str, ...] = ()

    def describe(self) -> str:
        """For the README's table, e.g. `signed-in account: admin, programme_lead`."""
        return f"{self.by}: {', '.join(self.roles)}" if self.roles else self.by


def open_to(who: str) -> Callable[[View], View]:
    """Declare a route that needs no account, and who it is for, e.g. "anyone",
    "holder of a survey link", "Twilio (signed)". Every route declares its access: a test
    fails on one that does not (tests/bot/test_access_matrix.py)."""

    def decorate(view: View) -> View:
        setattr(view, ACCESS_ATTRIBUTE, Access(who))
        return view

    return decorate


def _with_admin(roles: tuple[str, ...]) -> tuple[str, ...]:
    # Admins pass every role check (has_role), so the matrix lists them too.
    return roles if "admin" in roles else ("admin", *roles)


@dataclass(frozen=True)
class RouteAccess:
    """One row of the route matrix."""

    rule: str
    methods: tuple[str, ...]
    endpoint: str
    access: Access | None


def route_matrix(app: Flask) -> list[RouteAccess]:
    """Every route of `app` with its declared access (None where a route declares none)."""
    rows = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        view = app.view_functions[rule.endpoint]
        access = getattr(view, ACCESS_ATTRIBUTE, None)
        if rule.endpoint == "static":
            access = Access("anyone")  # Flask's own: the stylesheet
        methods = tuple(sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}))
        rows.append(RouteAccess(rule.rule, methods, rule.endpoint, access))
    return rows


def route_table(app: Flask) -> str:
    """The route matrix as the Markdown table in the README (`carepulse routes`)."""
    lines = ["| route | methods | who may use it |", "| --- | --- | --- |"]
    for row in route_matrix(app):
        who = row.access.describe() if row.access else "UNDECLARED"
        lines.append(f"| `{row.rule}` | {', '.join(row.methods)} | {who} |")
    return "\n".join(lines)


def programme_keys_for(account: Account) -> set[str] | None:
    """The keys of the programmes the account may see; None means all of them (admins)."""
    if not account.active:
        return set()
    if account.role == "admin":
        return None
    return {programme.key for programme in account.programmes}


def can_see_programme(account: Account | None, key: str) -> bool:
    """Whether the account may see programme `key` (no account sees nothing)."""
    if account is None:
        return False
    keys = programme_keys_for(account)
    return keys is None or key in keys
