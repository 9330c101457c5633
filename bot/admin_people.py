"""Admins find a person and erase them: `/admin/people` (search), `/admin/people/<id>`
(what erasure will do, and a confirmation form), `POST /admin/people/<id>/erase`.

Only admins (`require_role("admin")`). Erasing needs the form's CSRF token (`bot.csrf`)
and a ticked confirmation; it is recorded in the audit log with the admin's account and
address, in the same transaction as the erasure (`storage.privacy.erase_person`).
"""

from __future__ import annotations

from typing import Any

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import select

from bot.access import require_role
from bot.csrf import csrf_token, csrf_valid
from bot.db import get_session
from storage.models import CareHome, Person
from storage.privacy import (
    PrivacyError,
    erase_person,
    is_erased,
    plan_erasure,
    search_people,
    suppression_key,
)

bp = Blueprint("admin_people", __name__, url_prefix="/admin/people")

CSRF_KEY = "admin_people_csrf"
CONFIRM_FIELD = "confirm"
SEARCH_LIMIT = 50


def _person_or_404(person_id: int) -> Person:
    person = get_session().get(Person, person_id)
    if person is None or is_erased(person):
        abort(404, description="There is no one on the roster with that id.")
    return person


@bp.get("")
@require_role("admin")
def search() -> str:
    """Search the roster by name, staff number, mobile or email."""
    query = request.args.get("q", "").strip()[:200]
    session = get_session()
    people = search_people(session, query, limit=SEARCH_LIMIT) if query else []
    homes = {home_id: name for home_id, name in session.execute(select(CareHome.id, CareHome.name))}
    return render_template(
        "admin/people.html", query=query, people=people, homes=homes, limit=SEARCH_LIMIT
    )


def _person_page(person: Person, error: str | None = None, status: int = 200) -> Any:
    session = get_session()
    html = render_template(
        "admin/people_person.html",
        person=person,
        home=session.get(CareHome, person.care_home_id),
        plan=plan_erasure(session, person),
        csrf=csrf_token(CSRF_KEY),
        error=error,
    )
    return html, status


@bp.get("/<int:person_id>")
@require_role("admin")
def person(person_id: int) -> Any:
    """The person's roster entry and what erasing them would do, with the form to do it."""
    return _person_page(_person_or_404(person_id))


@bp.post("/<int:person_id>/erase")
@require_role("admin")
def erase(person_id: int) -> Any:
    """Erase the person, once the form's token and the confirmation box are there."""
    found = _person_or_404(person_id)
    if not csrf_valid(CSRF_KEY):
        return _person_page(found, "This page had expired. Check the details and try again", 400)
    if request.form.get(CONFIRM_FIELD) != "yes":
        return _person_page(found, "Tick the box to confirm that this cannot be undone", 400)
    session = get_session()
    try:
        erase_person(
            session,
            found,
            actor=g.account.email,
            key=suppression_key(current_app.config["SECRET_KEY"]),
            remote_addr=request.remote_addr,
        )
    except PrivacyError:
        session.rollback()
        abort(404, description="There is no one on the roster with that id.")
    session.commit()
    flash(
        f"Person id:{person_id} has been erased. Take them off the roster file too, "
        "or the next import will add them again."
    )
    return redirect(url_for(".search"), code=303)
