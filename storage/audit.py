"""The audit log: who did what, when, to what, from where. Append-only.

`record` is the one way in: it adds an `AuditEvent` and flushes, leaving the commit to the
caller, so an event is stored if and only if what it describes is (a roster import that
rolls back leaves no `roster_import` event). Nothing here updates or deletes an event,
and the database refuses to (triggers from migration 0006).

The log must not become a second copy of the personal data carepulse guards: `detail`
holds ids, counts, names of tables and filters, never a care worker's name, mobile or
email, nor a password or token. `record` refuses a detail that visibly breaks this (a
key such as `mobile` or `password`, a value that looks like an email address, a phone
number or an API token): a safety net for mistakes, not a licence to pass anything else.
Account emails (of staff users, not care workers) belong in `actor` and `target`.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from storage.models import AuditEvent, utcnow
from storage.vocabulary import AUDIT_ACTIONS

SYSTEM_ACTOR = "system"
"""The actor of what carepulse does by itself (the clock, retention purges)."""

MAX_DETAIL_CHARS = 2000
"""A detail is a few facts, not a document: longer ones are refused."""

FORBIDDEN_DETAIL_KEYS = frozenset(
    {
        "password",
        "passwd",
        "token",
        "secret",
        "mobile",
        "phone",
        "email",
        "address",
        "given_name",
        "family_name",
        "full_name",
    }
)
"""Keys that can only carry what the log must never hold (compared without case)."""

_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
# A phone number as people write it: +44..., 44..., or a UK number starting with 0, with
# spaces, hyphens or brackets, standing on its own. Dates and counts start otherwise, and a run
# of digits inside a hex digest touches letters, so both are left alone.
_PHONE = re.compile(r"(?<!\w)(?:\+|0|44)\d[\d ()\-]{7,}\d(?!\w)")
_API_TOKEN = re.compile(r"cp_[0-9a-f]{8}_")


class AuditDetailError(ValueError):
    """An audit event was given something the log must not hold; says what."""


def record(
    session: Session,
    action: str,
    *,
    actor: str | None,
    target: str | None = None,
    detail: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
    remote_addr: str | None = None,
) -> AuditEvent:
    """Add one audit event and flush it; the caller commits with the work it describes.

    `actor` is an account email, `console_actor()` or `SYSTEM_ACTOR` (None: nobody signed
    in); `target` names what was acted on, e.g. "person:42" or "programme:nwl-2027";
    `detail` is a small JSON object without personal data; `remote_addr` is the client's
    address for web requests. Raises ValueError for an action outside `AUDIT_ACTIONS` and
    AuditDetailError for a detail or target that would store what the log must not hold.
    """
    if action not in AUDIT_ACTIONS:
        raise ValueError(
            f"unknown audit action {action!r} (use one of: {', '.join(AUDIT_ACTIONS)})"
        )
    clean = check_detail(detail or {})
    if target is not None:
        _check_text("target", target, allow_email=True)
    event = AuditEvent(
        at=now or utcnow(),
        actor=actor,
        action=action,
        target=target,
        detail=clean,
        remote_addr=remote_addr[:45] if remote_addr else None,
    )
    session.add(event)
    session.flush()
    return event


def check_detail(detail: Mapping[str, Any]) -> dict[str, Any]:
    """`detail` as a plain JSON-ready dict, or AuditDetailError saying what it must not hold."""
    if not isinstance(detail, Mapping):
        raise AuditDetailError("an audit detail is a mapping of names to values")
    try:
        # A round trip through JSON: what is stored is exactly what comes back.
        text = json.dumps(dict(detail), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AuditDetailError(f"an audit detail must be plain JSON: {exc}") from None
    if len(text) > MAX_DETAIL_CHARS:
        raise AuditDetailError(f"an audit detail is at most {MAX_DETAIL_CHARS} characters")
    clean = json.loads(text)
    _check_value("detail", clean)
    return clean


def _check_value(where: str, value: Any) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            if key.lower() in FORBIDDEN_DETAIL_KEYS:
                raise AuditDetailError(f"an audit detail must not hold {key!r} ({where})")
            _check_value(f"{where}.{key}", inner)
    elif isinstance(value, list):
        for inner in value:
            _check_value(where, inner)
    elif isinstance(value, str):
        _check_text(where, value, allow_email=False)


def _check_text(where: str, text: str, *, allow_email: bool) -> None:
    # The message names where, never the value: it may end up in a log of its own.
    if not allow_email and _EMAIL.search(text):
        raise AuditDetailError(f"an audit {where} must not hold an email address")
    if _PHONE.search(text):
        raise AuditDetailError(f"an audit {where} must not hold a phone number")
    if _API_TOKEN.search(text):
        raise AuditDetailError(f"an audit {where} must not hold an API token")


WITHHELD = "[withheld]"
"""What `safe_text` stores instead of free text that looks like personal data."""


def safe_text(value: str | None, limit: int = 100) -> str | None:
    """Free text someone typed (a filter value, a token label), fit for a detail.

    Typed text cannot be trusted to hold no personal data, and refusing it would fail the
    work being audited: text that looks like an email address, a phone number or a token
    is replaced by `WITHHELD`, and long text is cut to `limit` characters.
    """
    if value is None:
        return None
    try:
        _check_text("text", value, allow_email=False)
    except AuditDetailError:
        return WITHHELD
    return value[:limit]


def console_actor() -> str:
    """The actor of a console command: "cli:" and the operating-system user running it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        # A container may run as a uid with no passwd entry and no USER variable.
        user = "unknown"
    return f"cli:{user}"


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's bytes: names an imported file exactly without its name,
    which may name a person, and lets an administrator match the log to the file kept."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def address_digest(secret: str, email: str) -> str:
    """A keyed digest of an email address, for refused sign-ins.

    The same address typed twice gives the same digest, so an administrator can see
    repeated attempts; without the server's secret nobody can test guesses against it
    (an unkeyed hash of an email address is reversed by hashing a list of addresses).
    """
    message = ("carepulse-audit-address:" + email.strip().lower()).encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:16]


def _filtered(
    stmt: Select[Any],
    action: str | None,
    actor: str | None,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> Select[Any]:
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if actor:
        stmt = stmt.where(AuditEvent.actor == actor)
    if since is not None:
        stmt = stmt.where(AuditEvent.at >= since)
    if until is not None:
        stmt = stmt.where(AuditEvent.at < until)
    return stmt


def find_events(
    session: Session,
    *,
    action: str | None = None,
    actor: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> Sequence[AuditEvent]:
    """Events matching every filter given, newest first (`since` inclusive, `until` not)."""
    stmt = _filtered(select(AuditEvent), action, actor, since, until)
    stmt = stmt.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    return session.scalars(stmt).all()


def count_events(
    session: Session,
    *,
    action: str | None = None,
    actor: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> int:
    """How many events match every filter given."""
    stmt = _filtered(select(func.count(AuditEvent.id)), action, actor, since, until)
    return int(session.scalar(stmt) or 0)


def known_actors(session: Session) -> list[str]:
    """Every actor that has an event, sorted (for the admin page's actor filter)."""
    stmt = select(AuditEvent.actor).where(AuditEvent.actor.is_not(None)).distinct()
    return sorted(session.scalars(stmt))
