"""Twilio's webhooks: inbound SMS (`POST /twilio/sms`) and delivery reports
(`POST /twilio/status`). Both refuse any request whose `X-Twilio-Signature` does not match,
before reading or storing anything. The handlers are thin: the conversation lives in
`surveys.sms_inbox`, delivery reports in `surveys.delivery`.
"""

from __future__ import annotations

import re

from flask import Blueprint, Response, abort, current_app, request
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from bot.access import open_to
from bot.config import Settings
from bot.db import get_session
from storage.models import utcnow
from surveys.delivery import apply_delivery_report
from surveys.sms_inbox import InboundSms, handle_inbound, record_replies

bp = Blueprint("twilio", __name__, url_prefix="/twilio")

_SID = re.compile(r"^(SM|MM)[0-9a-fA-F]{32}$")
_NUMBER = re.compile(r"^\+[1-9]\d{6,14}$")
# On a Twilio number, STOP and START are confirmed by Twilio itself (Advanced Opt-Out);
# a reply of ours to STOP would be blocked, so those are not answered in TwiML.
_TWILIO_ANSWERS = {"stop", "start"}


def _settings() -> Settings:
    return current_app.config["CAREPULSE"]


def signed_urls(settings: Settings) -> list[str]:
    """The URLs Twilio may have signed for this request: the public one, and with trusted
    proxies, the one rebuilt from X-Forwarded-* headers."""
    path = request.full_path.rstrip("?") if request.query_string else request.path
    urls = [f"{settings.public_base_url}{path}"]
    if settings.trusted_proxies and request.url not in urls:
        urls.append(request.url)
    return urls


@bp.before_request
def verify_signature() -> None:
    """Refuse (403) a request not signed with our auth token; 404 without Twilio settings."""
    settings = _settings()
    if settings.twilio is None:
        abort(404)
    signature = request.headers.get("X-Twilio-Signature", "")
    validator = RequestValidator(settings.twilio.auth_token)
    if not signature or not any(
        validator.validate(url, request.form, signature) for url in signed_urls(settings)
    ):
        current_app.logger.warning("refused a Twilio webhook with a bad signature")
        abort(403)


def _twiml(replies: list[str]) -> Response:
    twiml = MessagingResponse()
    for body in replies:
        twiml.message(body)
    return Response(str(twiml), mimetype="application/xml")


@bp.post("/sms")
@open_to("Twilio (X-Twilio-Signature checked)")
def inbound_sms() -> Response:
    """A text from a care worker: store it once, move their conversation on, reply."""
    form = request.form
    sid, sender = form.get("MessageSid", ""), form.get("From", "")
    if not _SID.match(sid) or not _NUMBER.match(sender):
        abort(400, "MessageSid and From (E.164) are required")
    session = get_session()
    now = utcnow()
    # PostgreSQL text cannot hold NUL; Twilio never sends one, a forger might.
    body = form.get("Body", "").replace("\x00", "")[:1600]
    to = form.get("To", "").replace("\x00", "")[:32]
    sms = InboundSms(sender, to, body, sid)
    result = handle_inbound(session, sms, now)
    if result.duplicate:
        session.rollback()
        return _twiml([])  # a retry of a text already answered: nothing more to say
    replies = [] if result.keyword in _TWILIO_ANSWERS else result.replies
    person = result.message.person if result.message else None
    record_replies(session, person, sender, to or "twilio", replies, "sent", now)
    session.commit()
    return _twiml(replies)


@bp.post("/status")
@open_to("Twilio (X-Twilio-Signature checked)")
def delivery_status() -> Response:
    """A delivery report for a text we sent."""
    form = request.form
    sid, status = form.get("MessageSid", ""), form.get("MessageStatus", "")
    if not _SID.match(sid) or not status:
        abort(400, "MessageSid and MessageStatus are required")
    session = get_session()
    code = form.get("ErrorCode", "").replace("\x00", "")[:16] or None
    apply_delivery_report(session, sid, status.replace("\x00", "")[:32], code)
    session.commit()
    return Response("", status=204)
