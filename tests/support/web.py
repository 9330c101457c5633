"""Browser-like steps for the test client: the CSRF token of a page, signing in."""

from __future__ import annotations

import re

PASSWORD = "correct horse battery"
"""The password the tests give the accounts they create (12 characters or more)."""


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
