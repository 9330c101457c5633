"""The carepulse web service: app factory, webhooks, transports, CLI and scheduler."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from flask import Flask

from bot import security
from bot.config import load_settings


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the Flask app from the environment, with `test_config` taking precedence.

    Raises `bot.config.ConfigError` naming the setting when one is missing or malformed.
    """
    settings = load_settings(test_config)
    app = Flask(__name__, instance_path=str(settings.instance_path))
    app.config.from_mapping(
        SECRET_KEY=settings.secret_key,
        CAREPULSE=settings,
        TESTING=bool((test_config or {}).get("TESTING", False)),
        # Request size limits (bot.security refuses larger requests with a plain 413).
        MAX_CONTENT_LENGTH=1024 * 1024,
        MAX_FORM_PARTS=security.MAX_FORM_PARTS,
        MAX_FORM_MEMORY_SIZE=security.MAX_FORM_MEMORY_SIZE,
        # The session cookie carries a survey respondent's place (see bot.survey_links):
        # never readable by scripts, not sent on cross-site posts, HTTPS-only when served
        # over HTTPS, and forgotten after a few idle hours (each request renews it).
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.public_base_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=4),
    )

    from bot import (
        admin_people,
        api,
        audit_view,
        auth,
        dashboard,
        db,
        devtools,
        errors,
        health,
        log_privacy,
        manager_reports,
        overview,
        survey_links,
        twilio_webhooks,
        unsubscribe,
    )

    # API tables keep their column and table order (the report's reading order).
    app.json.sort_keys = False  # type: ignore[attr-defined]
    log_privacy.install(app)  # before anything logs: phone numbers and tokens are masked
    db.init_app(app)
    errors.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(overview.bp)
    app.register_blueprint(survey_links.bp)
    app.register_blueprint(devtools.bp)
    app.register_blueprint(twilio_webhooks.bp)
    app.register_blueprint(unsubscribe.bp)
    app.register_blueprint(dashboard.bp)
    app.register_blueprint(manager_reports.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(audit_view.bp)
    app.register_blueprint(admin_people.bp)
    # After the blueprints: it rate limits the views they marked (bot.security.rate_limited).
    security.install(app)
    if settings.trusted_proxies:
        # Behind a TLS-terminating proxy, trust its X-Forwarded-* headers (and only its).
        from werkzeug.middleware.proxy_fix import ProxyFix

        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n)  # type: ignore[method-assign]
    return app
