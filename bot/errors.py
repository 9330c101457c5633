"""Error pages: a short, plain page for every error, never a stack trace."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from sqlalchemy.exc import DataError, OperationalError, ProgrammingError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


def init_app(app: Flask) -> None:
    """Register the error pages."""

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if _wants_json():
            return jsonify({"error": exc.description, "status": exc.code}), exc.code
        return render_template(
            "error.html", code=exc.code, title=exc.name, detail=exc.description
        ), exc.code

    @app.errorhandler(OperationalError)
    @app.errorhandler(ProgrammingError)
    def database_unavailable(exc: Exception):
        # An unreachable or unmigrated database: tell the caller to come back (and a
        # retrying client such as Twilio to retry), rather than fail with a 500.
        log.error("database unavailable: %s", exc.__class__.__name__)
        if _wants_json():
            return jsonify({"error": "database unavailable; try again shortly", "status": 503}), 503
        return render_template(
            "error.html",
            code=503,
            title="Service unavailable",
            detail="carepulse cannot reach its database just now. Please try again shortly.",
        ), 503

    @app.errorhandler(DataError)
    def malformed(exc: Exception):
        # Input the database cannot hold (a NUL byte, say): the request was malformed.
        return render_template(
            "error.html",
            code=400,
            title="Bad request",
            detail="Part of what was sent could not be read. Nothing was saved.",
        ), 400

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        if _wants_json():
            return jsonify({"error": "something went wrong on our side", "status": 500}), 500
        return render_template(
            "error.html",
            code=500,
            title="Something went wrong",
            detail="Sorry, something went wrong on our side. Answers you had already "
            "saved are safe; please try again.",
        ), 500


def _wants_json() -> bool:
    """API clients get errors as JSON, people get a page."""
    return request.path.startswith("/api/")
