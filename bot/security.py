"""Web hardening, installed on every app by `create_app`: security headers, request size
limits, rate limits and the sign-in throttle.

Headers: every response says what a browser may load (`CONTENT_SECURITY_POLICY`: the app's
own stylesheet and images, no script at all, never inside another site's frame), not to
sniff types, and which powerful features no page uses; `Strict-Transport-Security` is
added when the app is served over HTTPS. A view or blueprint that sets one of these
headers itself (the survey pages' `no-referrer`) keeps its own.

Size: a body larger than `MAX_CONTENT_LENGTH`, a form of more than `MAX_FORM_PARTS`
fields or a multipart field larger than `MAX_FORM_MEMORY_SIZE` is refused with 413 (a
plain page, or JSON under `/api/`) before a view reads it. Werkzeug counts the fields of
multipart forms only; urlencoded forms are counted here.

Rate limits (flask-limiter, one limiter per app; limits from `bot.config.RateLimits`),
counted by default on PostgreSQL in the app's own database (`storage.rate_limits`), so
that every worker and every restart counts against one budget (in memory on SQLite):

- links (`/s/`, `/u/`, `/my-360/`): per client address, one budget for the three. The
  tokens cannot be guessed; the limit stops scans and floods.
- the survey's pages: per respondent (see `bot.survey_links`), so that care workers who
  share an address (a care home's wifi, a mobile network's NAT) do not share a budget.
- the JSON API: per API token.
- sign-in: failed attempts per account and per address (`LoginThrottle`); a successful
  sign-in clears the account's count but not the address's, so one good password cannot
  be used to keep guessing others from the same place.
- Twilio's webhooks are never limited: Twilio retries what is refused, and their
  signature already keeps everyone else out.

A client address is `request.remote_addr`, which behind `TRUSTED_PROXIES` is the address
the proxy saw (ProxyFix); an IPv6 client counts by its /64, the block one subscriber gets.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Flask, abort, current_app, request
from flask_limiter import Limiter, RouteLimit
from limits import RateLimitItem, parse_many
from limits.errors import ConfigurationError
from limits.strategies import SlidingWindowCounterRateLimiter
from werkzeug.wrappers import Response as WebResponse

from bot.config import ConfigError, RateLimits
from storage import db as storage_db
from storage.rate_limits import DATABASE_STORAGE_URI

log = logging.getLogger(__name__)

View = TypeVar("View", bound=Callable[..., Any])

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",  # and so no script, font, frame, fetch or plugin of any kind
        "style-src 'self'",
        "img-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)
"""The pages use one stylesheet and same-site images (charts), and no JavaScript."""

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Permissions-Policy": "camera=(), geolocation=(), microphone=(), payment=(), usb=()",
}
"""Sent on every response unless the view has set the header itself."""

STRICT_TRANSPORT_SECURITY = "max-age=31536000; includeSubDomains"
"""One year, for this host and its subdomains; only ever sent over HTTPS."""

MAX_FORM_PARTS = 200
"""Most fields in one form. The app's own forms have five at most; Twilio's webhooks
some tens (more with media), so this leaves room for fields Twilio may add."""

MAX_FORM_MEMORY_SIZE = 64 * 1024
"""Largest multipart text field (the app takes none; an SMS body is 1,600 characters)."""

LIMITER = "carepulse.limiter"
THROTTLE = "carepulse.login_throttle"
RATE_LIMIT_ENGINE = "carepulse.rate_limit_engine"
"""Keys of the app's `Limiter`, `LoginThrottle` and (counting in the database) the engine
the counts go through, in `app.extensions`."""

TOO_MANY = "There have been too many requests in a short time. Wait a minute, then try again."
TOO_MANY_API = "too many requests with this API token; wait (see Retry-After), then try again"
TOO_LARGE = "What was sent is too large. Nothing was saved."

_MARK = "_carepulse_rate_limit"
_KINDS = ("links", "survey")


# --- who is asking ------------------------------------------------------------------------


def _address_key(remote_addr: str | None) -> str:
    try:
        address = ipaddress.ip_address(remote_addr or "")
    except ValueError:
        return remote_addr or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        # An IPv6 subscriber gets a whole /64: counting single addresses would let one
        # client take 2**64 budgets.
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


def client_address() -> str:
    """The key of the client's address: IPv4 as it is, IPv6 as its /64 network."""
    return _address_key(request.remote_addr)


def api_client() -> str:
    """The key of an API caller: a digest of its bearer token, else its address."""
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        # A digest: the token itself is a credential and must not sit in the store.
        return "token:" + hashlib.sha256(token.strip().encode()).hexdigest()[:32]
    return "address:" + client_address()


def rate_limited(kind: str, *, key: Callable[[], str] = client_address) -> Callable[[View], View]:
    """Mark a view to be rate limited by the app's `kind` limit (`links` or `survey`),
    counted per `key()`. All views of one kind share one budget per key.

    The mark only names the limit: `install` applies it with each app's own limiter. (A
    module-level Limiter would give every app in the process one store and one on/off
    switch; the tests make many apps.)
    """
    if kind not in _KINDS:
        raise ValueError(f"rate limit kind must be one of {_KINDS}, not {kind!r}")

    def mark(view: View) -> View:
        setattr(view, _MARK, (kind, key))
        return view

    return mark


# --- installing ---------------------------------------------------------------------------


def install(app: Flask) -> None:
    """Add the headers, size limits, rate limits and sign-in throttle to `app`.

    Call it after every blueprint is registered (it limits the views they marked).
    Raises `bot.config.ConfigError` when the rate-limit store cannot be used.
    """
    settings: RateLimits = app.config["CAREPULSE"].rate_limits
    limiter = _limiter(app, settings)
    _limit_marked_views(app, limiter, settings)
    if settings.api and "api" in app.blueprints:
        limiter.shared_limit(
            settings.api, scope="api", key_func=api_client, error_message=TOO_MANY_API
        )(app.blueprints["api"])
    app.extensions[LIMITER] = limiter
    app.extensions[THROTTLE] = LoginThrottle(
        strategy=SlidingWindowCounterRateLimiter(limiter.storage),
        secret=app.config["SECRET_KEY"],
        per_account=parse_many(settings.login_account) if settings.login_account else [],
        per_address=parse_many(settings.login_address) if settings.login_address else [],
    )
    _count_sign_ins()
    app.before_request(_refuse_oversized)
    app.after_request(_add_security_headers)


def _limiter(app: Flask, settings: RateLimits) -> Limiter:
    options: dict[str, Any] = {}
    if settings.storage_uri == DATABASE_STORAGE_URI:
        # The app's database, so every worker on it shares the counts, through an engine
        # of its own: counting never touches a request's session or waits for a connection
        # of the requests' pool, and the app's engine sees only the app's own queries.
        # A small pool (a request uses one connection at a time, briefly), and no ping
        # before each use: a round trip per count. A connection the server dropped fails
        # once; the pool then starts afresh, and flask-limiter counts in memory meanwhile.
        engine = storage_db.make_engine(
            app.config["CAREPULSE"].database_url,
            pool_size=2,
            max_overflow=8,
            pool_pre_ping=False,
        )
        app.extensions[RATE_LIMIT_ENGINE] = engine
        options["engine"] = engine
    try:
        return Limiter(
            key_func=client_address,
            app=app,
            storage_uri=settings.storage_uri,
            storage_options=options,
            # Counts a window that slides: "5 in 15 minutes" holds across a window's edge.
            strategy="sliding-window-counter",
            headers_enabled=True,  # Retry-After on a 429, and X-RateLimit-* for API clients
            # The store unreachable (the database or Redis down, or not migrated yet): count
            # in this process for now, and never turn a survey link into an error page
            # because of it.
            in_memory_fallback_enabled=True,
            swallow_errors=True,
        )
    except ConfigurationError as exc:
        raise ConfigError(f"RATELIMIT_STORAGE_URI cannot be used: {exc}") from None


def _limit_marked_views(app: Flask, limiter: Limiter, settings: RateLimits) -> None:
    limits: dict[tuple[str, Callable[[], str]], RouteLimit] = {}
    for endpoint, view in list(app.view_functions.items()):
        mark = getattr(view, _MARK, None)
        if mark is None:
            continue
        kind, key = mark
        value = getattr(settings, kind)
        if value is None:  # the setting says off
            continue
        if mark not in limits:
            limits[mark] = limiter.shared_limit(
                value, scope=kind, key_func=key, error_message=TOO_MANY
            )
        app.view_functions[endpoint] = limits[mark](view)


def _refuse_oversized() -> None:
    """413 for a body over the limit, even where the view would never read it, and for a
    urlencoded form of too many fields (Werkzeug counts multipart fields only)."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and limit and request.content_length > limit:
        abort(413, description=TOO_LARGE)
    if request.mimetype == "application/x-www-form-urlencoded":
        # Read once (within MAX_CONTENT_LENGTH) and kept: the form is parsed from this copy.
        fields = request.get_data(cache=True).count(b"&") + 1
        if fields > current_app.config["MAX_FORM_PARTS"]:
            abort(413, description=TOO_LARGE)


def _served_over_https() -> bool:
    base_url = current_app.config["CAREPULSE"].public_base_url
    return request.is_secure or base_url.startswith("https://")


def _add_security_headers(response: WebResponse) -> WebResponse:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if _served_over_https():
        response.headers.setdefault("Strict-Transport-Security", STRICT_TRANSPORT_SECURITY)
    return response


# --- signing in ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginThrottle:
    """Failed sign-ins counted per account and per client address, in the rate limits'
    store. An account is counted whether it exists or not, so the throttle does not tell
    which addresses have accounts.

    While either count is full, every attempt is refused before its password is checked,
    the right password too (otherwise the limit would stop nothing). That also means
    someone can keep an account locked out by failing on purpose: for at most the
    window, and the person can still be helped by an administrator.
    """

    strategy: SlidingWindowCounterRateLimiter
    secret: str
    per_account: list[RateLimitItem]
    per_address: list[RateLimitItem]

    def _account(self, email: str) -> str:
        # Keyed, hashed: the store (the database's table, perhaps a shared Redis) never
        # holds an email address.
        normalised = email.strip().casefold().encode()
        return hmac.new(self.secret.encode(), normalised, hashlib.sha256).hexdigest()[:32]

    def _counts(self, email: str, address: str) -> list[tuple[RateLimitItem, str, str]]:
        return [(item, "login-account", self._account(email)) for item in self.per_account] + [
            (item, "login-address", address) for item in self.per_address
        ]

    def permitted(self, email: str, address: str) -> bool:
        """Whether another attempt may be checked: neither count is full."""
        try:
            return all(
                self.strategy.test(item, *key) for item, *key in self._counts(email, address)
            )
        except Exception:  # the store is unreachable: do not lock everyone out
            log.exception("sign-in throttle store unavailable; attempt allowed")
            return True

    def failed(self, email: str, address: str) -> None:
        """Count a failed attempt against the account and the address."""
        try:
            for item, *key in self._counts(email, address):
                self.strategy.hit(item, *key)
        except Exception:
            log.exception("sign-in throttle store unavailable; failure not counted")

    def succeeded(self, email: str) -> None:
        """Forget the account's failed attempts (the address's stay counted)."""
        try:
            for item in self.per_account:
                self.strategy.clear(item, "login-account", self._account(email))
        except Exception:
            log.exception("sign-in throttle store unavailable; failures not cleared")


def login_permitted(email: str, remote_addr: str | None) -> bool:
    """Whether this sign-in attempt may be checked (`bot.auth.login_permitted`)."""
    throttle: LoginThrottle | None = current_app.extensions.get(THROTTLE)
    return throttle is None or throttle.permitted(email, _address_key(remote_addr))


def _count_sign_ins() -> None:
    # Imported here: bot.auth asks this module whether an attempt is permitted.
    from bot.auth import sign_in_failed, signed_in

    # Connecting the same function again (another app in this process) is a no-op.
    sign_in_failed.connect(_sign_in_failed)
    signed_in.connect(_signed_in)


def _sign_in_failed(sender: Any, *, email: str, remote_addr: str | None, **_: Any) -> None:
    throttle: LoginThrottle | None = current_app.extensions.get(THROTTLE)
    if throttle is not None:
        throttle.failed(email, _address_key(remote_addr))


def _signed_in(sender: Any, *, account: Any, **_: Any) -> None:
    throttle: LoginThrottle | None = current_app.extensions.get(THROTTLE)
    if throttle is not None:
        throttle.succeeded(account.email)
