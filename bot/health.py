"""`GET /healthz`: 200 only when the database answers and is fully migrated."""

from __future__ import annotations

from flask import Blueprint, jsonify
from sqlalchemy.exc import SQLAlchemyError

from bot.access import open_to
from bot.db import get_engine
from storage import db as storage_db

bp = Blueprint("health", __name__)


@bp.get("/healthz")
@open_to("anyone (status only)")
def healthz():
    """Report database reachability and migration state for load balancers and monitors."""
    try:
        current = storage_db.current_revision(get_engine())
    except SQLAlchemyError:
        return jsonify(status="error", database="unreachable"), 503
    head = storage_db.head_revision()
    if current != head:
        return jsonify(status="error", database="not migrated", current=current, newest=head), 503
    return jsonify(status="ok", database="ok", revision=current), 200
