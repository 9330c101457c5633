"""Signing in and out of carepulse: `GET/POST /login`, `POST /logout`.

The sign-in page follows the GOV.UK Design System (labels, an error summary that links to
the field, no JavaScript). Every POST carries the session's CSRF token (`bot.csrf`), so
another site can neither sign someone in as an account of its choosing nor sign them out.
A wrong password and an unknown address get the same message after the same work
(`storage.accounts.verify_login`), so the page never tells whether an address has an
account. Signing in starts a fresh session (`bot.access.sign_in`) and goes back to the
page that asked for it, but only ever to a path on this site (`safe_next`).

Seams for later work: `login_permitted` is where login rate limiting will refuse an
attempt before any password is checked, and the `signed_in`, `sign_in_failed` and
`signed_out` signals (blinker, as Flask's own) are what the audit log will listen to.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.signals import Namespace
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.wrappers import Response as WebResponse

from bot import security
from bot.access import current_account, open_to, sign_in, sign_out
from bot.csrf import csrf_token, csrf_valid
from bot.db import get_session
from storage.accounts import MAX_PASSWORD_LENGTH, verify_login

bp = Blueprint("auth", __name__)

CSRF_KEY = "account_csrf"
"""Session key of the CSRF token of the sign-in and sign-out forms."""

BAD_CREDENTIALS = "Enter a correct email address and password"
"""The one message for every failed sign-in: unknown address, wrong password, removed."""

_signals = Namespace()
signed_in = _signals.signal("carepulse.signed-in")
"""Sent (by this blueprint) with `account=` after a successful sign-in."""
sign_in_failed = _signals.signal("carepulse.sign-in-failed")
"""Sent with `email=` (as typed) and `remote_addr=` after a refused sign-in."""
signed_out = _signals.signal("carepulse.signed-out")
"""Sent with `account=` (None if the session had already ended) when someone signs out."""


@bp.after_request
def _private(response: WebResponse) -> WebResponse:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _account_for_templates() -> Any:
    try:
        return current_account()
    except SQLAlchemyError:
        # The header is drawn on error pages too, including "cannot reach the database":
        # it must never turn that page into another error.
        return None


@bp.app_context_processor
def _signed_in_context() -> dict[str, Any]:
    return {
        "signed_in_account": _account_for_templates,
        "account_csrf_token": lambda: csrf_token(CSRF_KEY),
    }


def safe_next(value: str | None) -> str:
    """`value` when it is a path on this site, otherwise the start page.

    Refuses absolute URLs (`https://evil.example`), scheme-relative ones (`//evil.example`),
    backslashes (browsers read `/\\evil.example` as `//evil.example`) and control characters.
    """
    default = url_for("overview.index")
    if not value or len(value) > 2000 or not value.startswith("/") or value.startswith("//"):
        return default
    if "\\" in value or any(ord(c) < 32 or ord(c) == 127 for c in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def login_permitted(email: str, remote_addr: str | None) -> bool:
    """Whether this sign-in attempt may be checked at all: not while the account, or the
    address, has had too many failed attempts lately (`bot.security.LoginThrottle`, which
    counts them from `sign_in_failed` and forgets the account's on `signed_in`).

    Asked before any password work; a refusal shows the sign-in page again with status 429.
    """
    return security.login_permitted(email, remote_addr)


def _page(
    next_url: str, *, email: str = "", errors: dict[str, str] | None = None, status: int = 200
) -> tuple[str, int]:
    html = render_template(
        "auth/login.html",
        next_url=next_url,
        email=email,
        errors=errors or {},
        csrf=csrf_token(CSRF_KEY),
        settings=current_app.config["CAREPULSE"],
    )
    return html, status


def _field_errors(email: str, password: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    if not email:
        errors["email"] = "Enter your email address"
    if not password:
        errors["password"] = "Enter your password"
    return errors


@bp.route("/login", methods=["GET", "POST"])
@open_to("anyone")
def login() -> Any:
    """Show the sign-in form (GET), or sign in and go back where the person was (POST)."""
    next_url = safe_next(request.values.get("next"))
    if request.method == "GET":
        return _page(next_url)
    email = request.form.get("email", "").strip()[:254]
    if not csrf_valid(CSRF_KEY):
        expired = "This page has expired. Enter your email address and password again"
        return _page(next_url, email=email, errors={"email": expired}, status=400)
    password = request.form.get("password", "")[: MAX_PASSWORD_LENGTH + 1]
    errors = _field_errors(email, password)
    if errors:
        return _page(next_url, email=email, errors=errors)
    if not login_permitted(email, request.remote_addr):
        wait = "Too many attempts to sign in. Wait a few minutes, then try again"
        return _page(next_url, email=email, errors={"email": wait}, status=429)
    db = get_session()
    account = verify_login(db, email, password)
    if account is None:
        db.rollback()
        sign_in_failed.send(bp, email=email, remote_addr=request.remote_addr)
        return _page(next_url, email=email, errors={"email": BAD_CREDENTIALS})
    db.commit()
    sign_in(account)
    signed_in.send(bp, account=account)
    if next_url == "/" and account.role == "evaluator":
        next_url = url_for("dashboard.index")  # the start page is for leads and admins
    return redirect(next_url, code=303)


@bp.post("/logout")
@open_to("a signed-in browser (CSRF-checked)")
def logout() -> Any:
    """Sign out of this browser and show the sign-in page."""
    if not csrf_valid(CSRF_KEY):
        abort(400, description="This page had expired. Go back, reload it and sign out again.")
    signed_out.send(bp, account=current_account())
    sign_out()
    flash("You have signed out.")
    return redirect(url_for("auth.login"), code=303)
