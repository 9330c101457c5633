"""Browser-like steps for the test client (the CSRF token of a page, signing in), and the
app as the suite configures it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

PASSWORD = "correct horse battery"
"""The password the tests give the accounts they create (12 characters or more)."""


def make_app(database_url: str, tmp_path: Path, **settings: Any):
    """The Flask app on `database_url` with the settings the suite's `app` fixture gives
    it (tests/conftest.py), `settings` added or overriding (Twilio's, SMTP's ...)."""
    from bot import create_app

    return create_app(
        {
            "TESTING": True,
            "DATABASE_URL": database_url,
            "SECRET_KEY": "test-secret-key-for-the-suite",
            "PUBLIC_BASE_URL": "http://127.0.0.1:5000",
            "INSTANCE_PATH": str(tmp_path / "instance"),
            **settings,
        }
    )


def twilio_settings() -> dict[str, str]:
    """The suite's Twilio account (tests/conftest.py's TWILIO_SID, TWILIO_TOKEN and
    TWILIO_NUMBER) as app settings: the webhooks check signatures with its token."""
    from tests.conftest import TWILIO_NUMBER, TWILIO_SID, TWILIO_TOKEN

    return {
        "TWILIO_ACCOUNT_SID": TWILIO_SID,
        "TWILIO_AUTH_TOKEN": TWILIO_TOKEN,
        "TWILIO_FROM_NUMBER": TWILIO_NUMBER,
    }


def csrf_token(html: str) -> str:
    """The CSRF token in a page's form, as a browser would send it back."""
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def sign_in(client, email: str, password: str = PASSWORD):
    """Sign in through /login as a person would; returns the POST's response."""
    page = client.get("/login").get_data(as_text=True)
    form = {"csrf_token": csrf_token(page), "email": email, "password": password}
    return client.post("/login", data=form)
