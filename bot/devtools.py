"""The development phone and mailbox: what carepulse sent, readable in the browser, and a
way to reply as a care worker would. Served only on the embedded defaults (no Twilio or
SMTP settings): the phone only without Twilio, the mailbox only without SMTP."""

from __future__ import annotations

import re

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from bot.access import open_to
from bot.db import get_session
from storage.models import Message, Person, utcnow
from surveys.sms_inbox import InboundSms, handle_inbound, record_replies

bp = Blueprint("devtools", __name__, url_prefix="/dev")

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


@bp.before_request
def _only_on_embedded_defaults():
    # The phone exists only without Twilio, the mailbox only without SMTP: a real
    # deployment never shows what it sent on a web page.
    settings = current_app.config["CAREPULSE"]
    wanted = "dev-phone" if request.path.startswith("/dev/phone") else "dev-mailbox"
    if wanted not in (settings.sms_transport, settings.email_transport):
        abort(404)


@bp.get("/phone")
@open_to("anyone, only on the embedded development phone (no Twilio settings)")
def phone():
    """Every SMS conversation, one thread per mobile number."""
    session = get_session()
    messages = session.scalars(
        select(Message).where(Message.channel == "sms").order_by(Message.id)
    ).all()
    threads: dict[str, list[Message]] = {}
    for message in messages:
        number = message.to_address if message.direction == "out" else message.from_address
        threads.setdefault(number, []).append(message)
    people = {
        p.mobile: p for p in session.scalars(select(Person).where(Person.mobile.in_(list(threads))))
    }
    return render_template("dev/phone.html", threads=threads, people=people)


@bp.post("/phone/<number>/reply")
@open_to("anyone, only on the embedded development phone (no Twilio settings)")
def reply(number: str):
    """A reply typed on the development phone, handled as an inbound SMS from `number`."""
    if not _E164.match(number):
        abort(404)
    body = (request.form.get("body") or "").replace("\x00", "").strip()
    if not body or len(body) > 1600:
        flash("Type a reply of 1 to 1600 characters.")
        return redirect(url_for("devtools.phone", _anchor=number))
    session = get_session()
    now = utcnow()
    # The same conversation code as a real text through Twilio's webhook.
    result = handle_inbound(session, InboundSms(number, "dev-phone", body, None), now)
    person = result.message.person if result.message else None
    record_replies(session, person, number, "dev-phone", result.replies, "delivered", now)
    session.commit()
    return redirect(url_for("devtools.phone", _anchor=number))


@bp.get("/mailbox")
@open_to("anyone, only on the embedded development mailbox (no SMTP settings)")
def mailbox():
    """Every email sent, newest first."""
    session = get_session()
    emails = session.scalars(
        select(Message)
        .where(Message.channel == "email", Message.direction == "out")
        .order_by(Message.id.desc())
    ).all()
    return render_template("dev/mailbox.html", emails=emails)
