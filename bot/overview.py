"""The start page: the programmes loaded, their cohorts, homes and waves, and how each
wave is going (counts only: no names or answers)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from zoneinfo import ZoneInfo

from flask import Blueprint, current_app, g, render_template
from sqlalchemy import func, select

from bot.access import programme_keys_for, require_role
from bot.db import get_session
from storage.models import Invitation, Person, Programme, utcnow

bp = Blueprint("overview", __name__)


@bp.app_template_filter("local_time")
def local_time(when: dt.datetime, tz_name: str) -> str:
    """A stored UTC instant as the programme's local time, e.g. `4 Jan 2027 09:00 GMT`."""
    return when.astimezone(ZoneInfo(tz_name)).strftime("%-d %b %Y %H:%M %Z")


@bp.get("/")
@require_role("admin", "programme_lead")
def index():
    """List programmes with their cohorts, homes (active people) and wave progress.

    For programme leads (their programmes) and admins: the counts are not disclosure
    controlled, so evaluators go to the dashboard instead."""
    session = get_session()
    keys = programme_keys_for(g.account)
    stmt = select(Programme).order_by(Programme.name)
    if keys is not None:
        stmt = stmt.where(Programme.key.in_(keys))
    programmes = session.scalars(stmt).all()
    active = dict(
        session.execute(
            select(Person.care_home_id, func.count())
            .where(Person.active_to.is_(None))
            .group_by(Person.care_home_id)
        ).all()
    )
    statuses: dict[int, Counter[str]] = {}
    for wave_id, status, count in session.execute(
        select(Invitation.wave_id, Invitation.status, func.count()).group_by(
            Invitation.wave_id, Invitation.status
        )
    ):
        statuses.setdefault(wave_id, Counter())[status] = count
    settings = current_app.config["CAREPULSE"]
    return render_template(
        "overview.html",
        programmes=programmes,
        active=active,
        statuses=statuses,
        now=utcnow(),
        dev_phone=settings.sms_transport == "dev-phone",
        dev_mailbox=settings.email_transport == "dev-mailbox",
    )
