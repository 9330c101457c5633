"""The evaluators' read-only JSON API, `/api/v1/` (described in `bot/openapi.yaml`).

Every answer comes from `reports.service.build_report`, the same call as the dashboard and
`carepulse report`, so the three always agree; like the dashboard's, a report is reused
while the data it reads is unchanged (`reports.cache`). Callers authenticate with an API token
(`Authorization: Bearer cp_...`, issued by `carepulse user token`) and see only the
programmes their account is scoped to; a programme outside that scope is a 404, not a 403,
so the API does not confirm that it exists.
"""

from __future__ import annotations

import datetime as dt
import math
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
from flask import Blueprint, Response, abort, jsonify, request
from sqlalchemy import select

from bot.access import can_see_programme, open_to, programme_keys_for, require_api_role
from bot.audit_view import record_request, report_detail
from bot.dashboard import report_cache
from bot.db import get_session
from reports.disclosure import SUPPRESSED, DisclosureError
from reports.service import (
    TABLE_TITLES,
    Report,
    ReportError,
    ReportRequest,
    programme_waves,
)
from storage.models import Programme

bp = Blueprint("api", __name__, url_prefix="/api/v1")

READERS = ("admin", "programme_lead", "evaluator")


@bp.get("/openapi.yaml")
@open_to("anyone (the API's description, no data)")
def openapi() -> Response:
    """The API's OpenAPI 3.1 description (public: it holds no data)."""
    text = resources.files("bot").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return Response(text, mimetype="application/yaml")


@bp.get("/programmes")
@require_api_role(*READERS)
def programmes() -> Response:
    """The programmes this token may read, with their waves and anonymity threshold."""
    from flask import g

    keys = programme_keys_for(g.account)
    stmt = select(Programme).order_by(Programme.key)
    if keys is not None:
        stmt = stmt.where(Programme.key.in_(keys))
    session = get_session()
    out = []
    for programme in session.scalars(stmt):
        waves = programme_waves(session, programme.key)
        out.append(
            {
                "key": programme.key,
                "name": programme.name,
                "anonymity_threshold": programme.anonymity_threshold,
                "waves": [{"key": k, "kind": kind, "name": name} for k, kind, name in waves],
            }
        )
    return jsonify({"programmes": out})


@bp.get("/programmes/<key>/report")
@require_api_role(*READERS)
def report(key: str) -> Response:
    """Every table of the programme's report, as `report_json` describes."""
    built = _report(key)
    _record_pull(built, "all")
    return jsonify(report_json(built))


@bp.get("/programmes/<key>/tables/<table>")
@require_api_role(*READERS)
def table(key: str, table: str) -> Response:
    """One table of the programme's report."""
    if table not in TABLE_TITLES:
        abort(404, f"there is no table {table!r}; tables: {', '.join(TABLE_TITLES)}")
    built = _report(key)
    body = report_json(built, only=table)
    _record_pull(built, table)
    return jsonify(body)


def _report(key: str) -> Report:
    from flask import g

    if not can_see_programme(g.account, key):
        abort(404, f"there is no programme {key!r}")
    try:
        wanted = ReportRequest.from_query(key, request.args)
        return report_cache().report(get_session(), wanted)
    except DisclosureError as exc:
        abort(403, str(exc))
    except ReportError as exc:
        status = 404 if str(exc).startswith("there is no programme") else 400
        abort(status, str(exc))


def _record_pull(built: Report, table: str) -> None:
    detail = report_detail(built.pre, built.post, built.filters, table=table)
    record_request("api_pull", target=f"programme:{built.programme}", detail=detail)


def report_json(built: Report, only: str | None = None) -> dict[str, Any]:
    """The report as JSON-ready data: metadata, then each table as title, columns and rows
    (one object per row; `"suppressed"` where a figure is withheld; null for no value)."""
    names = [only] if only else list(built.tables)
    body: dict[str, Any] = {
        "programme": built.programme,
        "programme_name": built.programme_name,
        "anonymity_threshold": built.threshold,
        "suppressed_marker": SUPPRESSED,
        "pre": built.pre,
        "post": built.post,
        "filters": built.filters,
        "generated_at": built.generated_at.isoformat(),
        "notes": built.notes,
        "tables": {name: table_json(name, built.tables[name]) for name in names},
    }
    if only in (None, "pulse"):
        body["pulse_reading"] = built.pulse_reading
    return body


def table_json(name: str, frame: pd.DataFrame) -> dict[str, Any]:
    """One table: its title, column names and rows."""
    columns = [str(c) for c in frame.columns]
    rows = [
        {c: json_value(v) for c, v in zip(columns, row, strict=True)}
        for row in frame.itertuples(index=False, name=None)
    ]
    return {"title": TABLE_TITLES.get(name, name), "columns": columns, "rows": rows}


def json_value(value: Any) -> Any:
    """A cell as JSON: numpy scalars to Python, NaN/NA to null, times to ISO 8601."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dt.datetime, dt.date, pd.Timestamp)):
        return value.isoformat()
    if isinstance(value, (tuple, list)):
        return [json_value(v) for v in value]
    return value
