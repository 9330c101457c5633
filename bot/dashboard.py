"""The evaluator dashboard (`/dashboard/`): the report's tables and charts, downloads, and
for programme leads the pseudonymised analysis file and each manager's confidential 360.

Tables and charts come from `reports.service.build_report`, the same call as the API and
`carepulse report`. Evaluators see aggregates only; the per-manager 360 pages and the wide
file are for admins and the programme's leads.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    g,
    render_template,
    request,
    send_file,
)
from sqlalchemy import select

from bot.access import can_see_programme, programme_keys_for, require_role
from bot.audit_view import record_request, report_detail
from bot.db import get_session
from bot.summary import pseudonym_key
from reports import report_charts, three_sixty
from reports.cache import ReportCache
from reports.disclosure import DisclosureError
from reports.export import wide_answers, write_csv, write_workbook
from reports.frames import (
    answers_frame,
    items_frame,
    min_raters,
    subjects_rated,
)
from reports.service import (
    FILTERS,
    TABLE_TITLES,
    Report,
    ReportError,
    ReportRequest,
    programme_waves,
)
from storage.models import Person, Programme

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")

READERS = ("admin", "programme_lead", "evaluator")
LEADS = ("admin", "programme_lead")
OPEN_TABLES = ("response_rates", "morale_by_home")
"""Tables shown open on the page; the longer ones start folded (a click opens them)."""


@bp.get("/")
@require_role(*READERS)
def index() -> str:
    """The programmes this account may see."""
    keys = programme_keys_for(g.account)
    stmt = select(Programme).order_by(Programme.key)
    if keys is not None:
        stmt = stmt.where(Programme.key.in_(keys))
    return render_template("dashboard/index.html", programmes=get_session().scalars(stmt).all())


@bp.get("/<key>/")
@require_role(*READERS)
def programme(key: str) -> str | tuple[str, int]:
    """The report page: filters, every table, the charts and the downloads."""
    waves = _visible_waves(key)
    try:
        built = _report(key)
    except (ReportError, DisclosureError) as exc:
        return render_template(
            "dashboard/programme.html",
            key=key,
            waves=waves,
            error=str(exc),
            report=None,
            args=request.args,
            filters=FILTERS,
            titles=TABLE_TITLES,
            charts=[],
        ), 403 if isinstance(exc, DisclosureError) else 400
    _record_report("report_view", built)
    return render_template(
        "dashboard/programme.html",
        key=key,
        waves=waves,
        error=None,
        report=built,
        args=request.args,
        filters=FILTERS,
        titles=TABLE_TITLES,
        charts=report_charts.names(built),
        describe=report_charts.description,
        open_tables=OPEN_TABLES,
        is_lead=g.account.role in LEADS,
    )


@bp.get("/<key>/charts/<name>.png")
@require_role(*READERS)
def chart(key: str, name: str) -> Response:
    """One chart of the report as PNG."""
    built = _report_or_abort(key)
    if name not in report_charts.names(built):
        abort(404, f"there is no chart {name!r}")
    figure = report_charts.draw(built, name)
    buffer = io.BytesIO()
    report_charts.save(figure, buffer)
    return Response(buffer.getvalue(), mimetype="image/png")


@bp.get("/<key>/tables/<table>.csv")
@require_role(*READERS)
def table_csv(key: str, table: str) -> Response:
    """One table as CSV, exactly as shown."""
    built = _report_or_abort(key)
    if table not in built.tables:
        abort(404, f"there is no table {table!r}")
    _record_report("report_export", built, format="csv", table=table)
    return _file_response(
        lambda path: write_csv(built.tables[table], path), f"{key}-{table}.csv", "text/csv"
    )


@bp.get("/<key>/report.xlsx")
@require_role(*READERS)
def workbook(key: str) -> Response:
    """Every table in one workbook, a sheet each, with an About sheet of methods."""
    built = _report_or_abort(key)
    _record_report("report_export", built, format="xlsx", table="all")
    return _file_response(
        lambda path: write_workbook(built.tables, path, notes=built.notes),
        f"{key}-report.xlsx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    )


@bp.get("/<key>/wide.csv")
@require_role(*LEADS)
def wide(key: str) -> Response:
    """The programme lead's pseudonymised analysis file: a row per person per wave."""
    _require_programme(key)
    session = get_session()
    frame = wide_answers(
        answers_frame(session, key),
        items_frame(session, key),
        pseudonym_key(current_app.config["SECRET_KEY"]),
    )
    record_request("wide_export", target=f"programme:{key}", detail={"rows": len(frame)})
    return _file_response(lambda path: write_csv(frame, path), f"{key}-wide.csv", "text/csv")


@bp.get("/<key>/managers/")
@require_role(*LEADS)
def managers(key: str) -> str:
    """The managers rated in the programme's 360s, each linking to their report."""
    _require_programme(key)
    return render_template(
        "dashboard/managers.html", key=key, managers=rated_managers(get_session(), key)
    )


@bp.get("/<key>/managers/<int:subject_id>")
@require_role(*LEADS)
def manager(key: str, subject_id: int) -> str:
    """One manager's confidential 360 report (leads and admins; the manager by link)."""
    _require_programme(key)
    return render_manager_report(key, subject_id)


def render_manager_report(key: str, subject_id: int) -> str:
    """The confidential 360 report page of one manager of the programme (or 404)."""
    session = get_session()
    person = dict(rated_managers(session, key)).get(subject_id)
    if person is None:
        abort(404, "there is no 360 report for this manager in this programme")
    tables = three_sixty.manager_report(
        answers_frame(session, key), items_frame(session, key), min_raters(session, key), subject_id
    )
    # Leads and admins open it from the dashboard; the manager, with no account, by link.
    via = "dashboard" if g.get("account") else "personal_link"
    record_request(
        "manager_report_view", target=f"person:{subject_id}", detail={"programme": key, "via": via}
    )
    return render_template(
        "dashboard/manager.html",
        key=key,
        name=person,
        tables=tables,
        min_raters=min_raters(session, key),
    )


def rated_managers(session, key: str) -> list[tuple[int, str]]:
    """(person id, full name) of everyone rated in the programme's 360s."""
    ids = subjects_rated(session, key)
    people = session.scalars(select(Person).where(Person.id.in_(ids))).all()
    return sorted(((p.id, p.full_name) for p in people), key=lambda pair: pair[1])


def _record_report(action: str, built: Report, **facts: str) -> None:
    detail = report_detail(built.pre, built.post, built.filters, **facts)
    record_request(action, target=f"programme:{built.programme}", detail=detail)


def _visible_waves(key: str) -> list[tuple[str, str, str]]:
    _require_programme(key)
    return programme_waves(get_session(), key)


def _require_programme(key: str) -> None:
    exists = get_session().scalar(select(Programme.id).where(Programme.key == key))
    if exists is None or not can_see_programme(g.account, key):
        abort(404, f"there is no programme {key!r}")


def report_cache() -> ReportCache:
    """This app's cache of built reports, shared by the dashboard and the API (one per app:
    another app's database may hold data with the same fingerprint)."""
    return current_app.extensions.setdefault("carepulse.report_cache", ReportCache())


def _report(key: str) -> Report:
    """The report asked for, reused while the data it reads is unchanged: a dashboard page
    and its charts would otherwise build the same report four times."""
    _require_programme(key)
    wanted = ReportRequest.from_query(key, request.args)
    return report_cache().report(get_session(), wanted)


def _report_or_abort(key: str) -> Report:
    try:
        return _report(key)
    except DisclosureError as exc:
        abort(403, str(exc))
    except ReportError as exc:
        abort(400, str(exc))


def _file_response(write, filename: str, mimetype: str) -> Response:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / filename
        write(path)
        data = path.read_bytes()
    return send_file(
        io.BytesIO(data), mimetype=mimetype, as_attachment=True, download_name=filename
    )
