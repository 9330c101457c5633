"""CSRF protection for the app's few forms: a random token kept in the signed session
cookie and echoed by each form in a hidden `csrf_token` field."""

from __future__ import annotations

import secrets

from flask import request, session

FIELD = "csrf_token"


def csrf_token(key: str = "csrf") -> str:
    """The session's token under `key`, created on first use."""
    token = session.get(key)
    if not isinstance(token, str) or not token:
        token = session[key] = secrets.token_urlsafe(32)
    return token


def csrf_valid(key: str = "csrf") -> bool:
    """Whether the POSTed form carries the session's token under `key`."""
    expected = session.get(key)
    given = request.form.get(FIELD, "")
    if not isinstance(expected, str) or not expected or not given:
        return False
    # Bytes, so that a non-ASCII forgery is a mismatch rather than a TypeError.
    return secrets.compare_digest(given.encode(), expected.encode())
