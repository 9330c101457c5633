"""A manager's own confidential 360 report, opened from a personal link (`/my-360/<token>`).

Managers have no account: like their survey links, the report link is an unguessable
token, here signed with the server's secret (itsdangerous, as Flask's own session is) and
valid for `LINK_DAYS`. It names one programme and one manager and opens nothing else. The
programme lead makes the links with `carepulse manager-links` and sends them.
"""

from __future__ import annotations

import datetime as dt

from flask import Blueprint, abort, current_app
from itsdangerous import BadSignature, URLSafeTimedSerializer

from bot.access import open_to
from bot.security import rate_limited

bp = Blueprint("manager_reports", __name__)

LINK_DAYS = 120
_SALT = "carepulse-manager-360-report"


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=_SALT)


def report_token(programme_key: str, subject_id: int) -> str:
    """The signed token of one manager's report in one programme."""
    return _serializer().dumps({"p": programme_key, "s": subject_id})


def report_link(programme_key: str, subject_id: int) -> str:
    """The full personal link, on the public base URL."""
    base = current_app.config["CAREPULSE"].public_base_url
    return f"{base}/my-360/{report_token(programme_key, subject_id)}"


@bp.get("/my-360/<token>")
@rate_limited("links")
@open_to("holder of a manager's personal 360 report link")
def own_report(token: str) -> str:
    """The manager's report, if the link is genuine and not older than `LINK_DAYS`."""
    from bot.dashboard import render_manager_report

    max_age = int(dt.timedelta(days=LINK_DAYS).total_seconds())
    try:
        data = _serializer().loads(token, max_age=max_age)
    except BadSignature:
        # Expired links are BadSignature too (SignatureExpired): one answer for both, so a
        # guesser learns nothing.
        abort(404, "This link is not valid or has expired. Ask your programme lead for a new one.")
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("s"), int)
        or not isinstance(data.get("p"), str)
    ):
        abort(404, "This link is not valid or has expired. Ask your programme lead for a new one.")
    return render_manager_report(data["p"], data["s"])
