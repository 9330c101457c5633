"""The report's charts: each takes a built `reports.service.Report` and draws one figure
from its (already disclosure-controlled) tables, so a chart can never show what the tables
withhold. `CHARTS` names them for the dashboard and `carepulse report --out`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

import pandas as pd
from matplotlib.figure import Figure

from reports import charts
from reports.disclosure import ALL, SUPPRESSED

if TYPE_CHECKING:
    from reports.service import Report


def _number(value: Any) -> float | None:
    if value is None or value == SUPPRESSED:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN is "no value"


def _label(row: pd.Series, columns: list[str]) -> str:
    return " · ".join(str(row[c]) for c in columns if c in row and pd.notna(row[c]))


def response_rates(report: Report) -> Figure:
    """RR2 (or the plain response rate) by wave and instrument."""
    table = report.tables["response_rates"]
    column = "RR2" if "RR2" in table.columns else "response_rate"
    rows = table[table["instrument"].astype(str) != ALL]
    labels = [_label(r, ["wave", "instrument"]) for _, r in rows.iterrows()]
    values = [_number(v) for v in rows[column]] if column in rows else []
    return charts.response_rate_bars(
        labels,
        values,
        [v == SUPPRESSED for v in rows[column]] if column in rows else [],
        title=f"Response rate ({column}) by wave and instrument",
    )


def prepost_items(report: Report) -> Figure:
    """Mean change with 95% CI for every item and scale with matched figures to show;
    the suppressed ones are counted in the title (they are listed in the table)."""
    table = report.tables["prepost"]
    hidden = int((table["mean_diff"] == SUPPRESSED).sum()) if not table.empty else 0
    table = table[table["mean_diff"] != SUPPRESSED] if not table.empty else table
    labels = [
        _label(r, ["instrument", "relation", "measure_id"]).replace(" · -", "")
        for _, r in table.iterrows()
    ]
    return charts.prepost_ci(
        labels,
        [_number(v) for v in table.get("mean_diff", [])],
        [_number(v) for v in table.get("ci95_low", [])],
        [_number(v) for v in table.get("ci95_high", [])],
        title=f"Change from {report.pre or '-'} to {report.post or '-'} (matched respondents)"
        + (f"; {hidden} suppressed rows not drawn" if hidden else ""),
    )


def self_vs_others(report: Report) -> Figure:
    """360: the managers' self-ratings against others' ratings, pooled, latest wave."""
    table = report.tables["three_sixty"]
    labels: list[str] = []
    selfs: list[float | None] = []
    others: list[float | None] = []
    wave = "-"
    if not table.empty:
        latest = table.sort_values("wave_opens_at")["wave"].iloc[-1]
        wave = str(latest)
        rows = table[(table["wave"] == latest) & (table["level"] == "item")]
        for item, group in rows.groupby("measure", sort=False):
            by_group = dict(zip(group["group"], group["mean"], strict=False))
            labels.append(str(item))
            selfs.append(_number(by_group.get("self")))
            others.append(_number(by_group.get("others")))
    return charts.self_vs_others(
        labels, selfs, others, title=f"360 appraisal, {wave}: self vs others (managers pooled)"
    )


def pulse_xmr(report: Report, cohort: str) -> Figure:
    """XmR chart of one cohort's morale over its pulse waves, signals highlighted."""
    table = report.tables["pulse"]
    rows = table[table["cohort"].astype(str) == cohort]
    signals = [i for i, s in enumerate(rows["signals"]) if isinstance(s, str) and s]
    return charts.xmr_chart(
        [str(x) for x in rows["label"]],
        [_number(v) for v in rows["mean"]],
        [_number(v) for v in rows["centre"]],
        [_number(v) for v in rows["unpl"]],
        [_number(v) for v in rows["lnpl"]],
        signals,
        f"Staff morale over time, {cohort} (pulse waves)",
        ylabel="Mean morale (1-5)",
    )


CHARTS: dict[str, Callable[[Report], Figure]] = {
    "response_rates": response_rates,
    "prepost": prepost_items,
    "three_sixty": self_vs_others,
}
"""Charts every report has; `names` adds one XmR chart per cohort with pulse waves."""

PULSE_PREFIX = "pulse_xmr_"

DESCRIPTIONS: dict[str, str] = {
    "response_rates": "Bar chart of the response rate (RR2) by wave and instrument",
    "prepost": "Mean change from before to after, with 95% confidence intervals, per item",
    "three_sixty": "Dot plot of managers' self-ratings against others' ratings, per item",
}


def description(name: str) -> str:
    """A short text alternative for the chart called `name`."""
    if name.startswith(PULSE_PREFIX):
        cohort = name.removeprefix(PULSE_PREFIX)
        return f"XmR chart of staff morale over the pulse waves of {cohort}, with its limits"
    return DESCRIPTIONS.get(name, name)


def names(report: Report) -> list[str]:
    """The charts of this report: the fixed ones, then `pulse_xmr_<cohort>` per cohort."""
    pulse = report.tables.get("pulse")
    cohorts = [] if pulse is None or pulse.empty else sorted(set(pulse["cohort"].astype(str)))
    return [*CHARTS, *(PULSE_PREFIX + c for c in cohorts)]


def draw(report: Report, name: str) -> Figure:
    """The figure called `name` (one of `names(report)`); KeyError for any other."""
    if name in CHARTS:
        return CHARTS[name](report)
    if name.startswith(PULSE_PREFIX) and name in names(report):
        return pulse_xmr(report, name.removeprefix(PULSE_PREFIX))
    raise KeyError(name)


def save(figure: Figure, file: str | IO[bytes]) -> None:
    """Write the figure as PNG (to a path or a binary file) and free it."""
    charts.save_png(figure, file)
