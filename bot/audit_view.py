"""The audit log in the app: what web requests record, the admin page, and `carepulse audit`.

Views record with `record_request`, which knows who is asking (the signed-in account, or
the owner of the API token) and from where, and commits. Sign-ins, refused sign-ins and
sign-outs are recorded by listening to `bot.auth`'s signals. Console commands call
`storage.audit.record` with `console_actor()` and commit with their own work.

Only admins read the log: `/admin/audit` (newest first, 50 a page, filtered by action,
actor and UTC dates) and `/admin/audit.csv`. Exporting the log is itself recorded.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click
import pandas as pd
from flask import Blueprint, Response, current_app, g, render_template, request, send_file
from flask.cli import with_appcontext
from sqlalchemy.orm import Session

from bot.access import require_role
from bot.auth import sign_in_failed, signed_in, signed_out
from bot.db import get_engine, get_session
from reports.export import write_csv
from storage import db as storage_db
from storage.accounts import find_account
from storage.audit import (
    address_digest,
    console_actor,
    count_events,
    find_events,
    known_actors,
    record,
    safe_text,
)
from storage.models import Account, AuditEvent
from storage.vocabulary import AUDIT_ACTIONS

bp = Blueprint("audit", __name__, url_prefix="/admin")

PAGE_SIZE = 50
CONSOLE_LIMIT = 50
AUDIT_COLUMNS = ("at", "actor", "action", "target", "remote_addr", "detail")
"""The columns of the audit CSV (web and console); `detail` is its JSON text."""


# --- recording ---------------------------------------------------------------------------


def record_request(
    action: str, *, target: str | None = None, detail: Mapping[str, Any] | None = None
) -> AuditEvent:
    """Record `action` by whoever made this request, from its address, and commit.

    The actor is the account on `g.account` (set by `require_role`/`require_api_role`);
    an API call also names its token by its public prefix, never the token itself.
    """
    account: Account | None = g.get("account")
    facts = dict(detail or {})
    token = g.get("api_token")
    if token is not None:
        facts["token_prefix"] = token.prefix
    return record_after_reading(
        get_session(),
        action,
        actor=account.email if account else None,
        target=target,
        detail=facts,
        remote_addr=request.remote_addr,
    )


def record_after_reading(
    session: Session,
    action: str,
    *,
    actor: str | None,
    target: str | None = None,
    detail: Mapping[str, Any] | None = None,
    remote_addr: str | None = None,
) -> AuditEvent:
    """Commit what `session` holds, then record the event in a transaction of its own.

    For work that only read (a report viewed or exported). On SQLite a transaction that
    has read cannot start writing once another connection has written since: it fails
    at once with "database is locked" (SQLITE_BUSY_SNAPSHOT), whatever the busy timeout,
    and answers arrive all the time. A transaction whose first statement is the insert
    waits its turn instead.
    """
    session.commit()
    event = record(
        session, action, actor=actor, target=target, detail=detail, remote_addr=remote_addr
    )
    session.commit()
    return event


def report_detail(
    pre: str | None, post: str | None, filters: Mapping[str, str], **facts: Any
) -> dict[str, Any]:
    """The detail of a report seen or exported: its waves, its filters, and `facts`."""
    return {
        "pre": pre,
        "post": post,
        # Filter values are typed by the person asking: never stored if they look personal.
        "filters": {name: safe_text(value) for name, value in filters.items()},
        **facts,
    }


def _on_signed_in(_sender: Any, account: Account, **_: Any) -> None:
    record_after_reading(
        get_session(), "sign_in", actor=account.email, remote_addr=request.remote_addr
    )


def _on_sign_in_failed(_sender: Any, email: str, remote_addr: str | None, **_: Any) -> None:
    # What was typed may be a care worker's address, or a password typed in the wrong
    # field: only a keyed digest is kept, so repeats show without the text. An address
    # that has an account is named as the target (account emails are staff's, not care
    # workers'), so guessing at one account's password shows up.
    session = get_session()
    account = find_account(session, email)
    record_after_reading(
        session,
        "sign_in_failed",
        actor=None,
        target=f"account:{account.email}" if account else None,
        detail={"address_digest": address_digest(current_app.config["SECRET_KEY"], email)},
        remote_addr=remote_addr,
    )


def _on_signed_out(_sender: Any, account: Account | None, **_: Any) -> None:
    if account is None:
        return  # the session had already ended: nobody signed out
    record_after_reading(
        get_session(), "sign_out", actor=account.email, remote_addr=request.remote_addr
    )


# Module-level functions: blinker holds them weakly, and the module keeps them alive.
signed_in.connect(_on_signed_in)
sign_in_failed.connect(_on_sign_in_failed)
signed_out.connect(_on_signed_out)


# --- reading ------------------------------------------------------------------------------


class FilterError(ValueError):
    """A filter of the audit log that cannot be applied; the message says why."""


def _utc_day(value: str | None, name: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise FilterError(f"{name}: enter a date as YYYY-MM-DD, for example 2027-01-31") from None
    return dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)


def audit_filters(args: Mapping[str, str]) -> dict[str, Any]:
    """The filters of `find_events` from a query: action, actor, since and until (UTC days;
    `until` includes its day). Raises FilterError for an unknown action or a bad date."""
    action = args.get("action") or None
    if action is not None and action not in AUDIT_ACTIONS:
        raise FilterError(f"there is no action {action!r}")
    until = _utc_day(args.get("until"), "until")
    return {
        "action": action,
        "actor": (args.get("actor") or "").strip() or None,
        "since": _utc_day(args.get("since"), "since"),
        "until": until + dt.timedelta(days=1) if until else None,
    }


def audit_table(events: Sequence[AuditEvent]) -> pd.DataFrame:
    """Events as a table with `AUDIT_COLUMNS`, times in UTC ISO 8601, detail as JSON."""
    rows = [
        (
            e.at.isoformat(timespec="seconds"),
            e.actor,
            e.action,
            e.target,
            e.remote_addr,
            json.dumps(e.detail, sort_keys=True),
        )
        for e in events
    ]
    return pd.DataFrame(rows, columns=list(AUDIT_COLUMNS), dtype=object)


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    # write_csv neutralises formula-like cells: an actor or a target can be typed text.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "audit.csv"
        write_csv(frame, path)
        return path.read_bytes()


@bp.get("/audit")
@require_role("admin")
def page() -> tuple[str, int]:
    """The audit log, newest first, a page at a time, filtered by the query."""
    try:
        filters = audit_filters(request.args)
    except FilterError as exc:
        return _render(error=str(exc), events=[], total=0, page_number=1), 400
    try:
        page_number = max(1, int(request.args.get("page", "1")))
    except ValueError:
        page_number = 1
    session = get_session()
    total = count_events(session, **filters)
    events = find_events(session, **filters, limit=PAGE_SIZE, offset=(page_number - 1) * PAGE_SIZE)
    return _render(error=None, events=events, total=total, page_number=page_number), 200


def _render(*, error: str | None, events: Sequence[AuditEvent], total: int, page_number: int):
    kept = {k: v for k, v in request.args.items() if k != "page" and v}

    def page_url(number: int) -> str:
        return "?" + urlencode({**kept, "page": number})

    return render_template(
        "admin/audit.html",
        error=error,
        events=events,
        total=total,
        page_number=page_number,
        last_page=max(1, -(-total // PAGE_SIZE)),
        page_url=page_url,
        csv_url="audit.csv" + ("?" + urlencode(kept) if kept else ""),
        args=request.args,
        actions=AUDIT_ACTIONS,
        actors=known_actors(get_session()),
    )


@bp.get("/audit.csv")
@require_role("admin")
def csv_export() -> Response | tuple[str, int]:
    """Every event matching the query's filters as CSV, newest first; the export is logged."""
    try:
        filters = audit_filters(request.args)
    except FilterError as exc:
        return str(exc), 400
    frame = audit_table(find_events(get_session(), **filters))
    target, detail = _export_detail(filters, len(frame))
    record_request("audit_export", target=target, detail=detail)
    return send_file(
        io.BytesIO(_csv_bytes(frame)),
        mimetype="text/csv",
        as_attachment=True,
        download_name="carepulse-audit.csv",
    )


def _export_detail(filters: Mapping[str, Any], rows: int) -> tuple[str | None, dict[str, Any]]:
    """The target and detail of an export of the log: which slice, how many events."""
    days = {
        "since": filters["since"].date().isoformat() if filters["since"] else None,
        "until": (filters["until"] - dt.timedelta(days=1)).date().isoformat()
        if filters.get("until")
        else None,
    }
    detail = {"action": filters["action"], **days, "rows": rows}
    # An actor is an account email (allowed in a target, not in a detail) or cli:/system;
    # named only when it matched events, so typed text that matched nothing is not kept.
    target = f"actor:{filters['actor']}" if filters["actor"] and rows else None
    return target, {k: v for k, v in detail.items() if v is not None}


# --- the console ----------------------------------------------------------------------------


@click.command("audit")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="From this UTC day on.")
@click.option("--action", type=click.Choice(AUDIT_ACTIONS), help="Only this action.")
@click.option("--actor", help="Only this actor (an account email, cli:<user> or system).")
@click.option(
    "--csv",
    "csv_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every matching event to this CSV file instead of printing.",
)
@click.option(
    "--limit",
    type=click.IntRange(1),
    default=CONSOLE_LIMIT,
    show_default=True,
    help="Print at most this many of the newest events.",
)
@with_appcontext
def audit_command(
    since: dt.datetime | None,
    action: str | None,
    actor: str | None,
    csv_file: Path | None,
    limit: int,
) -> None:
    """Show the audit log, newest first, or write it as CSV (--csv)."""
    if not storage_db.is_migrated(get_engine()):
        raise click.ClickException("the database is not migrated: run `carepulse db upgrade`")
    session = get_session()
    filters = {
        "action": action,
        "actor": actor,
        "since": since.replace(tzinfo=dt.UTC) if since else None,
    }
    if csv_file:
        frame = audit_table(find_events(session, **filters))
        csv_file.parent.mkdir(parents=True, exist_ok=True)
        csv_file.write_bytes(_csv_bytes(frame))
        target, detail = _export_detail(filters, len(frame))
        record_after_reading(
            session, "audit_export", actor=console_actor(), target=target, detail=detail
        )
        click.echo(f"wrote {len(frame)} audit events to {csv_file}")
        return
    total = count_events(session, **filters)
    for event in find_events(session, **filters, limit=limit):
        click.echo(_line(event))
    click.echo(f"({min(total, limit)} of {total} events shown, newest first)")


def _line(event: AuditEvent) -> str:
    detail = json.dumps(event.detail, sort_keys=True) if event.detail else ""
    parts = [
        f"{event.at:%Y-%m-%d %H:%M:%S} UTC",
        event.actor or "(nobody signed in)",
        event.action,
        event.target or "-",
        event.remote_addr or "-",
        detail,
    ]
    return "  ".join(parts).rstrip()
