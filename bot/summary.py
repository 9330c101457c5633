"""The plain-text report printed by `carepulse report` and `carepulse demo`, and the files
`carepulse report --out` writes. Both render a `reports.service.Report` as it is."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import click
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from reports import report_charts
from reports.disclosure import SUPPRESSED
from reports.export import write_csv, write_workbook
from reports.prepost import PREPOST_COLUMNS
from reports.service import TABLE_TITLES, Report
from storage.models import Programme

PRINTED = ("response_rates", "response_rates_by_home", "prepost", "three_sixty", "morale_by_home")
"""The tables printed on the terminal; `--out` writes them all."""

PRINTED_COLUMNS: dict[str, list[str]] = {
    "three_sixty": ["wave", "measure", "group", "n_managers", "n_raters", "mean", "gap"],
    "response_rates": ["wave", "instrument", "invited", "completed", "response_rate", "RR1", "RR2"],
    "response_rates_by_home": ["wave", "instrument", "home", "invited", "completed", "RR2"],
    # Up to the confidence interval, then the effect size; the tests are in the files.
    "prepost": [*PREPOST_COLUMNS[: PREPOST_COLUMNS.index("ci95_high") + 1], "d_z"],
}


def resolve_programme(session: Session, key: str | None) -> str:
    """The programme key to report on: the one given, or the only one there is."""
    keys = session.scalars(select(Programme.key).order_by(Programme.key)).all()
    if key is None:
        if len(keys) != 1:
            listed = ", ".join(keys) or "none loaded"
            raise click.ClickException(f"name a programme with --programme ({listed})")
        return keys[0]
    if key not in keys:
        raise click.ClickException(f"no programme {key!r}; known: {', '.join(keys) or 'none'}")
    return key


def pseudonym_key(secret_key: str) -> bytes:
    """The key of the analysis file's pseudonyms: derived from SECRET_KEY, so stable across
    exports (files can be merged) but useless without the server's secret."""
    if not secret_key:
        raise ValueError("SECRET_KEY is empty: cannot make pseudonyms")
    return hmac.new(secret_key.encode(), b"carepulse-pseudonym", hashlib.sha256).digest()


def report_text(report: Report) -> str:
    """The report's main tables as text for a terminal."""
    parts = [
        f"Programme {report.programme} (groups under {report.threshold} people are suppressed)",
        f"Comparing {report.pre or '-'} with {report.post or '-'}"
        + (f"; filtered to {report.filters}" if report.filters else ""),
    ]
    for name in PRINTED:
        table = report.tables.get(name)
        if table is None:
            continue
        parts += ["", TABLE_TITLES[name]]
        if name == "prepost":
            parts += _prepost_lines(table, report.threshold)
        elif name == "three_sixty":
            scales = table[table["level"] == "scale"] if "level" in table else table
            parts.append("(scales only; every item is in the CSV, XLSX and dashboard)")
            parts.append(_table(_columns(scales, PRINTED_COLUMNS[name])))
        else:
            parts.append(_table(_columns(table, PRINTED_COLUMNS.get(name))))
    parts += ["", report.pulse_reading]
    return "\n".join(parts)


def write_report_files(report: Report, out: Path) -> list[str]:
    """Every table as CSV, one workbook with all of them, and the charts as PNG, in `out`.
    Returns the names written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in report.tables.items():
        write_csv(table, out / f"{name}.csv")
        written.append(f"{name}.csv")
    write_workbook(report.tables, out / "report.xlsx", notes=report.notes)
    written.append("report.xlsx")
    charts = out / "charts"
    charts.mkdir(exist_ok=True)
    for name in report_charts.names(report):
        with open(charts / f"{name}.png", "wb") as file:
            report_charts.save(report_charts.draw(report, name), file)
        written.append(f"charts/{name}.png")
    return written


def _prepost_lines(change: pd.DataFrame, threshold: int) -> list[str]:
    """The reported rows, then one line per group whose items are all suppressed."""
    if change.empty:
        return ["  (nothing yet: no wave pair to compare)"]
    hidden = change["n_pairs"] == SUPPRESSED
    lines = [_table(_columns(change[~hidden], PRINTED_COLUMNS["prepost"]))]
    items = change[hidden & (change["measure"] == "item")]
    for (instrument, relation), group in items.groupby(["instrument", "relation"], sort=True):
        who = "" if relation == "-" else f" ({relation} ratings)"
        lines.append(
            f"  {instrument}{who}: {len(group)} item(s) suppressed, fewer than "
            f"{threshold} matched respondents"
        )
    return lines


def _columns(frame: pd.DataFrame, wanted: list[str] | None) -> pd.DataFrame:
    if not wanted:
        return frame
    return frame[[c for c in wanted if c in frame.columns]]


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "  (nothing yet)"
    return frame.to_string(index=False)
