"""Unsubscribe links, `/u/<token>`: stop the emails about a programme.

Every invitation email carries its invitation's token in an unsubscribe link and in the
`List-Unsubscribe` header. `GET` only asks (link scanners and previews must never
unsubscribe anyone); the page's form posts back with a per-session CSRF token. Mail
clients use RFC 8058 one-click instead: a `POST` whose only field is
`List-Unsubscribe=One-Click`, with no cookie or CSRF token, which the RFC requires to work.
Either records an email opt-out for the person, which closes their open email invitations
and stops every later one. The token is a credential: pages are never cached or referred.
"""

from __future__ import annotations

import re

from flask import Blueprint, render_template, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bot.access import open_to
from bot.csrf import csrf_token, csrf_valid
from bot.db import get_session
from bot.security import rate_limited
from storage.models import Invitation
from surveys.opt_outs import is_opted_out, opt_out

bp = Blueprint("unsubscribe", __name__)

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,100}")
_CSRF_KEY = "unsubscribe_csrf"
ONE_CLICK = ("List-Unsubscribe", "One-Click")


_TITLES = {
    "ask": "Stop emails about this programme?",
    "done": "You will not get more emails",
    "expired": "Please try again",
    "unknown": "This link is not recognised",
}


@bp.after_request
def _private(response):
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _page(state: str, status: int = 200, **context):
    html = render_template("unsubscribe.html", state=state, title=_TITLES[state], **context)
    return html, status


def _invitation(token: str) -> Invitation | None:
    if not _TOKEN.fullmatch(token):
        return None
    return get_session().scalar(select(Invitation).where(Invitation.token == token))


def _csrf_token() -> str:
    return csrf_token(_CSRF_KEY)


def _csrf_ok() -> bool:
    return csrf_valid(_CSRF_KEY)


def _one_click() -> bool:
    """An RFC 8058 one-click request: the single field List-Unsubscribe=One-Click."""
    fields = list(request.form.items(multi=True))
    return fields == [ONE_CLICK] and not request.files


@bp.route("/u/<token>", methods=["GET", "POST"])
@rate_limited("links")
@open_to("holder of an unsubscribe link")
def unsubscribe(token: str):
    """Ask whether to stop emails (GET), or stop them (POST from the form or a mail client)."""
    invitation = _invitation(token)
    if invitation is None:
        return _page("unknown", 404)
    person = invitation.person
    programme = invitation.wave.cohort.programme.name
    if request.method == "GET":
        if person.email and is_opted_out(get_session(), "email", person.email):
            return _page("done", programme=programme)
        return _page("ask", programme=programme, csrf=_csrf_token())
    if not _one_click() and not _csrf_ok():
        return _page("expired", 400)
    if person.email:
        session = get_session()
        try:
            opt_out(session, "email", person.email, "unsubscribe", person)
            session.commit()
        except IntegrityError:
            # A second copy of the same request (mail clients retry) recorded it first.
            session.rollback()
    return _page("done", programme=programme)
