"""All configuration, read from the environment in this one place.

Every setting named in the design's stable surface is parsed and checked here, at start-up,
so that a missing or malformed value stops the service with a message naming it instead
of failing later in the middle of a send.
"""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from limits import parse_many
from limits.storage import SCHEMES as RATE_LIMIT_STORAGE_SCHEMES
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

# Also registers the database:// scheme with limits (RATE_LIMIT_STORAGE_SCHEMES).
from storage.rate_limits import DATABASE_STORAGE_URI


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the setting and the reason."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class TwilioSettings:
    """Credentials and sender for the Twilio Messages API."""

    account_sid: str
    auth_token: str
    from_number: str | None
    messaging_service_sid: str | None
    api_base_url: str | None


@dataclass(frozen=True)
class SmtpSettings:
    """An SMTP relay for outgoing email."""

    host: str
    port: int
    username: str | None
    password: str | None
    starttls: bool


@dataclass(frozen=True)
class RateLimits:
    """Request rate limits (see `bot.security`), each a flask-limiter string such as
    `30/minute;300/hour`, or None where the setting says `off`."""

    storage_uri: str = DATABASE_STORAGE_URI
    """Where counts are kept: `database://` in the app's own database (table
    `rate_limit_counters`, see `storage.rate_limits`), shared by every gunicorn worker and
    kept across restarts; `memory://` in each process (each worker counts separately and a
    restart forgets); or a store such as `redis://host:6379/0` once its client library is
    installed. Loaded settings default to `default_rate_limit_store(DATABASE_URL)`."""
    links: str | None = "30/minute;300/hour"
    """Survey, unsubscribe and manager-report links (`/s/`, `/u/`, `/my-360/`), per address."""
    survey: str | None = "120/minute;1200/hour"
    """The survey's pages (`/survey...`), per respondent (the session's invitation)."""
    api: str | None = "120/minute"
    """The JSON API (`/api/v1/...`), per API token (per address without one)."""
    login_account: str | None = "5/15 minutes"
    """Failed sign-ins per account (email address as typed, known or not)."""
    login_address: str | None = "20/hour"
    """Failed sign-ins per client address, whichever accounts they tried."""


@dataclass(frozen=True)
class Settings:
    """The parsed configuration. `twilio`/`smtp` are None on the embedded defaults."""

    database_url: str
    public_base_url: str
    secret_key: str
    timezone: str
    mail_from: str
    instance_path: Path
    twilio: TwilioSettings | None = None
    smtp: SmtpSettings | None = None
    trusted_proxies: int = 0
    send_rate: float = 10.0
    """Messages per second per sender for the outbox dispatcher; 0 switches pacing off."""
    rate_limits: RateLimits = field(default_factory=RateLimits)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sms_transport(self) -> str:
        """`twilio` when credentials are set, otherwise the in-app development phone."""
        return "twilio" if self.twilio else "dev-phone"

    @property
    def email_transport(self) -> str:
        """`smtp` when a relay is set, otherwise the in-app development mailbox."""
        return "smtp" if self.smtp else "dev-mailbox"


def _get(env: Mapping[str, Any], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name}={value!r} is not an http(s) URL such as https://example.org")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name}={value!r} must not have a query string or fragment")
    return value.rstrip("/")


def _database_url(value: str) -> str:
    # Heroku-style URLs say postgres://, which SQLAlchemy 2 no longer accepts.
    if value.startswith("postgres://"):
        value = "postgresql+psycopg://" + value[len("postgres://") :]
    elif value.startswith("postgresql://"):
        value = "postgresql+psycopg://" + value[len("postgresql://") :]
    try:
        backend = make_url(value).get_backend_name()
    except ArgumentError as exc:
        raise ConfigError(f"DATABASE_URL is not a database URL: {exc}") from None
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"DATABASE_URL uses {backend!r}; use sqlite or postgresql")
    return value


def _bool(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean (use true or false)")


def _twilio(env: Mapping[str, Any]) -> TwilioSettings | None:
    sid, token = _get(env, "TWILIO_ACCOUNT_SID"), _get(env, "TWILIO_AUTH_TOKEN")
    sender, service = _get(env, "TWILIO_FROM_NUMBER"), _get(env, "TWILIO_MESSAGING_SERVICE_SID")
    if not any((sid, token, sender, service)):
        return None
    if not sid:
        raise ConfigError("TWILIO_ACCOUNT_SID is missing (other TWILIO_* settings are set)")
    if not re.fullmatch(r"AC[0-9a-fA-F]{32}", sid):
        raise ConfigError("TWILIO_ACCOUNT_SID must be 'AC' followed by 32 hexadecimal digits")
    if not token:
        raise ConfigError("TWILIO_AUTH_TOKEN is missing (TWILIO_ACCOUNT_SID is set)")
    if not sender and not service:
        raise ConfigError("set TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID to send SMS")
    if sender:
        try:
            parsed = phonenumbers.parse(sender, None)
            valid = phonenumbers.is_possible_number(parsed)
        except phonenumbers.NumberParseException:
            valid = False
        if not valid or not sender.startswith("+"):
            raise ConfigError(f"TWILIO_FROM_NUMBER={sender!r} is not an E.164 number (+44...)")
    if service and not re.fullmatch(r"MG[0-9a-fA-F]{32}", service):
        raise ConfigError("TWILIO_MESSAGING_SERVICE_SID must be 'MG' followed by 32 hex digits")
    base = _get(env, "TWILIO_API_BASE_URL")
    return TwilioSettings(
        account_sid=sid,
        auth_token=token,
        from_number=sender,
        messaging_service_sid=service,
        api_base_url=_url("TWILIO_API_BASE_URL", base) if base else None,
    )


def _smtp(env: Mapping[str, Any]) -> SmtpSettings | None:
    host = _get(env, "SMTP_HOST")
    if not host:
        for name in ("SMTP_PORT", "SMTP_USERNAME", "SMTP_PASSWORD"):
            if _get(env, name):
                raise ConfigError(f"{name} is set but SMTP_HOST is missing")
        return None
    port_text = _get(env, "SMTP_PORT") or "587"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"SMTP_PORT={port_text!r} is not a port number (1-65535)")
    username, password = _get(env, "SMTP_USERNAME"), _get(env, "SMTP_PASSWORD")
    if bool(username) != bool(password):
        raise ConfigError("SMTP_USERNAME and SMTP_PASSWORD must be set together")
    starttls = _get(env, "SMTP_STARTTLS")
    return SmtpSettings(
        host=host,
        port=int(port_text),
        username=username,
        password=password,
        starttls=_bool("SMTP_STARTTLS", starttls) if starttls else int(port_text) == 587,
    )


DEFAULT_SEND_RATE = 10.0


def _send_rate(env: Mapping[str, Any]) -> float:
    """SEND_RATE_PER_SECOND: a positive number of messages per second; `0` or `off`: no pacing."""
    text = _get(env, "SEND_RATE_PER_SECOND")
    if text is None:
        return DEFAULT_SEND_RATE
    if text.lower() == "off":
        return 0.0
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not math.isfinite(rate) or rate < 0:
        raise ConfigError(
            f"SEND_RATE_PER_SECOND={text!r} is not a positive number of messages per second"
            " (e.g. 10; 0 or off switches pacing off)"
        )
    return rate


RATE_LIMIT_SETTINGS = {
    "links": "RATELIMIT_LINKS",
    "survey": "RATELIMIT_SURVEY",
    "api": "RATELIMIT_API",
    "login_account": "RATELIMIT_LOGIN_ACCOUNT",
    "login_address": "RATELIMIT_LOGIN_ADDRESS",
}
"""`RateLimits` field -> the environment variable that sets it."""


def default_rate_limit_store(database_url: str) -> str:
    """Where rate limits count unless RATELIMIT_STORAGE_URI says: in the app's database on
    PostgreSQL, shared by every gunicorn worker; in memory on SQLite, which serves one
    development process, and where a count written between a request's read and its write
    would make that write fail ("database is locked" in WAL mode)."""
    backend = make_url(database_url).get_backend_name()
    return DATABASE_STORAGE_URI if backend == "postgresql" else "memory://"


def _rate_limits(env: Mapping[str, Any], database_url: str) -> RateLimits:
    """RATELIMIT_*: limits such as `30/minute;300/hour` (or `off`), and where to count."""
    values: dict[str, str | None] = {}
    for attribute, name in RATE_LIMIT_SETTINGS.items():
        text = _get(env, name)
        if text is None:
            continue
        if text.lower() == "off":
            values[attribute] = None
            continue
        try:
            parse_many(text)
        except ValueError:
            raise ConfigError(
                f"{name}={text!r} is not a rate limit such as 30/minute;300/hour (or off)"
            ) from None
        values[attribute] = text
    uri = _get(env, "RATELIMIT_STORAGE_URI") or default_rate_limit_store(database_url)
    scheme = uri.partition("://")[0] if "://" in uri else "(no scheme)"
    # The app is synchronous: an async+ storage would never be awaited.
    if scheme not in RATE_LIMIT_STORAGE_SCHEMES or scheme.startswith("async+"):
        # The scheme only: the rest of the URI may hold a password.
        raise ConfigError(
            f"RATELIMIT_STORAGE_URI: {scheme!r} is not a rate-limit store; use "
            f"{DATABASE_STORAGE_URI} (the app's database, the default), memory:// or one "
            "such as redis://host:6379/0"
        )
    if scheme == "database" and uri != DATABASE_STORAGE_URI:
        # Not echoed: someone may have put a database URL with its password here.
        raise ConfigError(
            f"RATELIMIT_STORAGE_URI: write just {DATABASE_STORAGE_URI}, which counts in the "
            "app's own database (DATABASE_URL)"
        )
    return RateLimits(storage_uri=uri, **values)


def _secret_key(env: Mapping[str, Any], instance_path: Path, production: bool) -> str:
    key = _get(env, "SECRET_KEY")
    if key:
        if len(key) < 16:
            raise ConfigError("SECRET_KEY is too short: use at least 16 random characters")
        return key
    if production:
        raise ConfigError("SECRET_KEY is missing; it is required once Twilio or SMTP is set")
    # Embedded defaults: a key kept in the instance folder so sessions survive restarts.
    path = instance_path / "secret_key"
    if path.exists():
        return path.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    path.write_text(key)
    path.chmod(0o600)
    return key


def load_settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """Read and check every setting; `overrides` (e.g. a test config) win over the environment."""
    env: dict[str, Any] = dict(os.environ)
    env.update(overrides or {})
    instance_path = Path(_get(env, "INSTANCE_PATH") or Path.cwd() / "instance").resolve()
    tz = _get(env, "TIMEZONE") or "Europe/London"
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"TIMEZONE={tz!r} is not an IANA zone like Europe/London") from None
    twilio, smtp = _twilio(env), _smtp(env)
    port = _get(env, "PORT") or "5000"
    base = _url("PUBLIC_BASE_URL", _get(env, "PUBLIC_BASE_URL") or f"http://127.0.0.1:{port}")
    mail_from = _get(env, "MAIL_FROM")
    if smtp and not mail_from:
        raise ConfigError("MAIL_FROM is missing; it is required when SMTP_HOST is set")
    if mail_from:
        try:
            validate_email(mail_from, check_deliverability=False)
        except EmailNotValidError as exc:
            raise ConfigError(f"MAIL_FROM={mail_from!r} is not an email address: {exc}") from None
    mail_from = mail_from or "carepulse@dev-mailbox.test"
    proxies = _get(env, "TRUSTED_PROXIES") or "0"
    if not proxies.isdigit():
        raise ConfigError(f"TRUSTED_PROXIES={proxies!r} is not a whole number (proxies in front)")
    default_db = f"sqlite:///{instance_path / 'carepulse.sqlite3'}"
    database_url = _database_url(_get(env, "DATABASE_URL") or default_db)
    return Settings(
        database_url=database_url,
        public_base_url=base,
        secret_key=_secret_key(env, instance_path, production=bool(twilio or smtp)),
        timezone=tz,
        mail_from=mail_from,
        instance_path=instance_path,
        twilio=twilio,
        smtp=smtp,
        trusted_proxies=int(proxies),
        send_rate=_send_rate(env),
        rate_limits=_rate_limits(env, database_url),
    )
