"""Survey links, `/s/<token>`: the questions of one invitation on one page.

A simple single-page form: every item with its labelled scale; answers are stored through
the same path as SMS answers. Unknown, expired and completed links get a page that says
which, and nothing else.
"""

from __future__ import annotations

from flask import Blueprint, render_template, request
from sqlalchemy import select

from bot.db import get_session
from storage.models import Invitation, utcnow
from surveys.answers import complete_response, record_answer
from surveys.catalogue import definition_of

bp = Blueprint("survey_links", __name__)


@bp.after_request
def _private(response):
    # The token is a credential: keep the page out of caches and referrers.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _closed_page(invitation: Invitation | None):
    if invitation is None:
        return render_template("survey/closed.html", reason="unknown"), 404
    if invitation.status == "completed":
        return render_template("survey/closed.html", reason="completed"), 200
    if invitation.status in ("expired", "opted_out", "failed") or (
        invitation.wave.closes_at <= utcnow()
    ):
        return render_template("survey/closed.html", reason="expired"), 410
    return None


@bp.route("/s/<token>", methods=["GET", "POST"])
def survey(token: str):
    """Show the invitation's questions, or store the answers given."""
    session = get_session()
    invitation = session.scalar(select(Invitation).where(Invitation.token == token))
    closed = _closed_page(invitation)
    if closed is not None:
        return closed
    assert invitation is not None
    definition = definition_of(invitation.instrument_version)
    relation = invitation.rater_relation
    errors: dict[str, str] = {}
    values: dict[str, int | None] = {}
    if request.method == "POST":
        for item in definition.items:
            raw = request.form.get(item.id, "")
            if raw == "skip":
                values[item.id] = None
            elif raw.isdigit() and int(raw) in item.scale.values:
                values[item.id] = int(raw)
            else:
                errors[item.id] = "Choose an answer, or 'Prefer not to say'"
        if not errors:
            for item_id, value in values.items():
                record_answer(session, invitation, item_id, value, "web")
            complete_response(session, invitation)
            session.commit()
            return render_template("survey/thanks.html", invitation=invitation)
    return render_template(
        "survey/form.html",
        invitation=invitation,
        definition=definition,
        relation=relation,
        errors=errors,
        form=request.form,
    ), (400 if errors else 200)
