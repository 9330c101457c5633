"""The web survey: `/s/<token>` exchanges a survey link for a session, `/survey...` asks.

Pages follow the GOV.UK / NHS.UK Design System patterns (start page, one question per
page, check your answers, confirmation) and need no JavaScript.

The token is a credential, so it is only ever in ONE request: `GET /s/<token>` looks it up
and, for an open invitation, stores the invitation's id in Flask's signed session cookie
(HttpOnly, SameSite=Lax, Secure over HTTPS; see `create_app`) and redirects to `/survey`,
a URL without the token, so the token does not stay in the browser's history, in
`Referer` headers or in later log lines. Unknown, closed and completed links get a page
that says which and whom to contact, and nothing else.

Every POST carries a random per-session CSRF token (a new one whenever the session is
given a different invitation, so a form left open for one survey can never store answers
in another); it is compared in constant time, and a missing or wrong one stores nothing.
Each answer is saved (and committed) as soon as it is given, through the same
`record_answer` as SMS answers, so a person can stop at any time and carry on later
from their link.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, abort, redirect, render_template, request, url_for
from flask import session as cookie
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as WebResponse

from bot.access import open_to
from bot.csrf import csrf_token, csrf_valid
from bot.db import get_session
from bot.security import client_address, rate_limited
from storage.models import Answer, Invitation, Programme, Response, utcnow
from surveys.answers import complete_response, record_answer
from surveys.catalogue import definition_of
from surveys.instruments import InstrumentDefinition, Item

bp = Blueprint("survey_links", __name__)

TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{32}")
"""The shape of every survey-link token: 24 bytes from `secrets`, urlsafe base64."""

INVITATION_KEY = "survey_invitation"
"""Session key of the id of the invitation this browser is answering."""

CSRF_KEY = "survey_csrf"
"""Session key of the CSRF token the survey's forms must send back."""

SKIP = "skip"
"""The form value of "Prefer not to say", stored as a skipped answer (value None)."""

DEFAULT_MIN_RATERS = {"staff": 5, "peer": 3}
"""Fewest raters in an anonymous 360 group for its scores to be reported, when the
programme's `settings["min_raters"]` does not say."""

SECONDS_PER_QUESTION = 20
NO_CONTACT = "your programme team"


class _Stop(Exception):
    """Ends a request early with a finished page (no session, bad CSRF token, closed)."""

    def __init__(self, response: Any) -> None:
        super().__init__()
        self.response = response


def _respondent() -> str:
    """Whose survey-page requests share a rate limit: the session's invitation, so that care
    workers behind one address (a home's wifi, a mobile network's NAT) each have their own;
    the client's address for requests without one."""
    invitation_id = cookie.get(INVITATION_KEY)
    if isinstance(invitation_id, int):
        return f"invitation:{invitation_id}"
    return f"address:{client_address()}"


@bp.errorhandler(_Stop)
def _stopped(exc: _Stop):
    return exc.response


@bp.after_request
def _private(response: WebResponse) -> WebResponse:
    # Survey pages hold a person's answers and the link a credential: keep them out of
    # caches, and never tell another site where the person came from.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


# --- who is answering ------------------------------------------------------------------


@dataclass
class _Survey:
    """The invitation this session answers, and what it asks."""

    invitation: Invitation
    definition: InstrumentDefinition
    programme: Programme

    @property
    def relation(self) -> str | None:
        return self.invitation.rater_relation

    @property
    def items(self) -> tuple[Item, ...]:
        return self.definition.items

    @property
    def total(self) -> int:
        return len(self.definition.items)

    def text(self, item: Item) -> str:
        return self.definition.item_text(item.id, self.relation)

    def answers(self, db: Session) -> dict[str, int | None]:
        """Item id -> stored value (None for "Prefer not to say"); unanswered items absent."""
        rows = db.execute(
            select(Answer.item_id, Answer.value)
            .join(Response, Answer.response_id == Response.id)
            .where(Response.invitation_id == self.invitation.id)
        )
        return {item_id: value for item_id, value in rows}


def _contact(invitation: Invitation | None) -> str:
    """Whom the person should contact: the programme's contact, or its team."""
    if invitation is None:
        return NO_CONTACT
    settings = invitation.wave.cohort.programme.settings or {}
    contact = settings.get("contact")
    return contact.strip() if isinstance(contact, str) and contact.strip() else NO_CONTACT


def _closed_reason(invitation: Invitation) -> str | None:
    """`completed`, `expired` (closed in any way) or None while the invitation is open."""
    if invitation.status == "completed":
        return "completed"
    if invitation.status in ("expired", "opted_out", "failed"):
        return "expired"
    if invitation.wave.closes_at <= utcnow():
        return "expired"
    return None


def _closed_page(reason: str, invitation: Invitation | None):
    status = {"unknown": 404, "completed": 200, "expired": 410}[reason]
    page = render_template("survey/closed.html", reason=reason, contact=_contact(invitation))
    return page, status


def _problem_page(kind: str, invitation: Invitation | None = None):
    """No usable session (403), or a form without the session's CSRF token (400)."""
    status = {"no_session": 403, "csrf": 400}[kind]
    page = render_template("survey/problem.html", kind=kind, contact=_contact(invitation))
    return page, status


def _check_csrf(invitation: Invitation) -> None:
    if not csrf_valid(CSRF_KEY):
        raise _Stop(_problem_page("csrf", invitation))


def _csrf_token() -> str:
    return csrf_token(CSRF_KEY)


def _survey(db: Session, *, completed_ok: bool = False) -> _Survey:
    """The session's open invitation, or stop with the page that explains why not.

    POSTs are checked for the CSRF token before anything else happens, and lock the
    invitation's row (on PostgreSQL) so that a double click is handled one at a time.
    """
    invitation_id = cookie.get(INVITATION_KEY)
    if not isinstance(invitation_id, int):
        raise _Stop(_problem_page("no_session"))
    query = select(Invitation).where(Invitation.id == invitation_id)
    if request.method == "POST":
        query = query.with_for_update()
    invitation = db.scalar(query)
    if invitation is None:
        raise _Stop(_problem_page("no_session"))
    if request.method == "POST":
        _check_csrf(invitation)
    reason = _closed_reason(invitation)
    if reason is not None and not (reason == "completed" and completed_ok):
        raise _Stop(_closed_page(reason, invitation))
    cookie.permanent = True  # renewed on every request: the session ends after idle hours
    return _Survey(
        invitation=invitation,
        definition=definition_of(invitation.instrument_version),
        programme=invitation.wave.cohort.programme,
    )


# --- wording helpers -----------------------------------------------------------------


def _closing_time(when: dt.datetime, tz_name: str) -> str:
    """GOV.UK style: '9am on Monday 18 January 2027 (GMT)', in the programme's zone."""
    local = when.astimezone(ZoneInfo(tz_name))
    zone = local.strftime("%Z")
    if (local.hour, local.minute) == (0, 0):
        day = local - dt.timedelta(days=1)
        return f"midnight at the end of {day:%A} {day.day} {day:%B %Y} ({zone})"
    if (local.hour, local.minute) == (12, 0):
        time = "midday"
    else:
        hour = local.hour % 12 or 12
        minutes = f":{local.minute:02d}" if local.minute else ""
        time = f"{hour}{minutes}{'am' if local.hour < 12 else 'pm'}"
    return f"{time} on {local:%A} {local.day} {local:%B %Y} ({zone})"


def _answer_text(item: Item, value: int | None) -> str:
    if value is None:
        return "Prefer not to say"
    label = item.scale.label(value)
    return f"{value} – {label}" if label else str(value)


def _notice(survey: _Survey) -> dict[str, Any] | None:
    """What the start page says about who will see the answers."""
    relation = survey.relation
    subject = survey.invitation.subject
    if relation in DEFAULT_MIN_RATERS and subject is not None:
        configured = (survey.programme.settings or {}).get("min_raters") or {}
        minimum = configured.get(relation) or DEFAULT_MIN_RATERS[relation]
        return {"kind": "anonymous", "minimum": minimum, "subject": subject.full_name}
    if relation == "line_manager" and subject is not None:
        return {"kind": "named", "subject": subject.full_name}
    if relation is None:
        return {"kind": "grouped", "minimum": survey.programme.anonymity_threshold}
    return None


def _about(survey: _Survey) -> str | None:
    """'Margaret Okafor, Willow Court' for someone rating another person, else None."""
    subject = survey.invitation.subject
    if subject is None or survey.relation == "self":
        return None
    return f"{subject.full_name}, {subject.care_home.name}"


# --- routes ------------------------------------------------------------------------------


@bp.get("/s/<token>")
@rate_limited("links")
@open_to("holder of a survey link")
def exchange(token: str):
    """Swap a survey link's token for a session, then continue at a URL without it."""
    if not TOKEN_PATTERN.fullmatch(token):
        return _closed_page("unknown", None)  # no database query for what cannot be a token
    db = get_session()
    invitation = db.scalar(select(Invitation).where(Invitation.token == token))
    if invitation is None:
        return _closed_page("unknown", None)
    reason = _closed_reason(invitation)
    if reason is not None:
        return _closed_page(reason, invitation)
    if cookie.get(INVITATION_KEY) != invitation.id:
        # Another invitation (or none) until now: forms open for it must not post here.
        cookie[INVITATION_KEY] = invitation.id
        cookie.pop(CSRF_KEY, None)
        csrf_token(CSRF_KEY)  # a fresh token for this survey's forms
    cookie.permanent = True
    return redirect(url_for(".start"), 303)


@bp.get("/survey")
@rate_limited("survey", key=_respondent)
@open_to("holder of a survey link")
def start():
    """The start page: what the survey is, about whom, how long, who sees the answers."""
    db = get_session()
    survey = _survey(db)
    answers = survey.answers(db)
    first_open = next((n for n, item in enumerate(survey.items, 1) if item.id not in answers), None)
    if not answers:
        next_url = url_for(".question", number=1)
    elif first_open is not None:
        next_url = url_for(".question", number=first_open)
    else:
        next_url = url_for(".check")
    return render_template(
        "survey/start.html",
        survey=survey,
        definition=survey.definition,
        about=_about(survey),
        relation=survey.relation,
        answered=sum(1 for item in survey.items if item.id in answers),
        minutes=max(1, math.ceil(survey.total * SECONDS_PER_QUESTION / 60)),
        closes=_closing_time(survey.invitation.wave.closes_at, survey.programme.timezone),
        notice=_notice(survey),
        next_url=next_url,
        contact=_contact(survey.invitation),
    )


@bp.route("/survey/q/<int:number>", methods=["GET", "POST"])
@rate_limited("survey", key=_respondent)
@open_to("holder of a survey link")
def question(number: int):
    """One question: show it, or save its answer and go on."""
    db = get_session()
    survey = _survey(db)
    if not 1 <= number <= survey.total:
        abort(404)
    item = survey.items[number - 1]
    change = request.args.get("change") == "1"
    error = None
    if request.method == "POST":
        choices: dict[str, int | None] = {str(v): v for v in item.scale.values}
        choices[SKIP] = None
        raw = request.form.get(item.id, "")
        if raw in choices:
            _save(db, survey.invitation, item.id, choices[raw])
            if change or number == survey.total:
                return redirect(url_for(".check"), 303)
            return redirect(url_for(".question", number=number + 1), 303)
        error = "Select an answer, or select ‘Prefer not to say’"
        selected = None
    else:
        answers = survey.answers(db)
        if item.id not in answers:
            selected = None
        else:
            value = answers[item.id]
            selected = SKIP if value is None else str(value)
    if change:
        back_url = url_for(".check")
    elif number > 1:
        back_url = url_for(".question", number=number - 1)
    else:
        back_url = url_for(".start")
    subject = survey.invitation.subject
    return render_template(
        "survey/question.html",
        survey=survey,
        definition=survey.definition,
        item=item,
        text=survey.text(item),
        group=survey.definition.groups.get(item.group) if item.group else None,
        number=number,
        total=survey.total,
        about=subject.full_name if subject is not None and survey.relation != "self" else None,
        selected=selected,
        error=error,
        skip=SKIP,
        action=url_for(".question", number=number, change=1 if change else None),
        back_url=back_url,
        csrf_token=_csrf_token(),
    ), (400 if error else 200)


def _save(db: Session, invitation: Invitation, item_id: str, value: int | None) -> None:
    """Store one answer and commit it; a concurrent first answer (two tabs) is retried."""
    for attempt in range(2):
        try:
            record_answer(db, invitation, item_id, value, "web")
            db.commit()
            return
        except IntegrityError:
            db.rollback()
            if attempt:
                raise


@bp.route("/survey/check", methods=["GET", "POST"])
@rate_limited("survey", key=_respondent)
@open_to("holder of a survey link")
def check():
    """Check your answers; sending them completes the response (once, however often sent)."""
    db = get_session()
    survey = _survey(db, completed_ok=request.method == "POST")
    if request.method == "POST":
        for attempt in range(2):
            if survey.invitation.status == "completed":
                break  # sent already (a double click, the back button, a replayed POST)
            try:
                complete_response(db, survey.invitation)
                db.commit()
                break
            except IntegrityError:  # a concurrent first send created the response
                db.rollback()
                if attempt:
                    raise
        return redirect(url_for(".done"), 303)
    answers = survey.answers(db)
    rows = [
        {
            "number": n,
            "text": survey.text(item),
            "answer": _answer_text(item, answers[item.id]) if item.id in answers else None,
            "change_url": url_for(".question", number=n, change=1),
        }
        for n, item in enumerate(survey.items, 1)
    ]
    return render_template(
        "survey/check.html",
        survey=survey,
        definition=survey.definition,
        about=_about(survey),
        rows=rows,
        unanswered=sum(1 for row in rows if row["answer"] is None),
        csrf_token=_csrf_token(),
    )


@bp.get("/survey/done")
@rate_limited("survey", key=_respondent)
@open_to("holder of a survey link")
def done():
    """The confirmation, shown again however often the answers were sent."""
    db = get_session()
    survey = _survey(db, completed_ok=True)
    if survey.invitation.status != "completed":
        return redirect(url_for(".check"), 303)
    return render_template(
        "survey/done.html",
        definition=survey.definition,
        contact=_contact(survey.invitation),
    )
