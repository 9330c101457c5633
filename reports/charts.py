"""PNG charts of report figures: response rates, pre/post change, 360 self vs others,
and XmR (statistical process control) charts of a measure over time.

Figures are built with matplotlib's object API on the Agg canvas and never registered with
pyplot, so charts can be drawn in web requests and threads without a display and nothing
is kept in a global figure list. Accessible defaults: every chart has a title and axis
labels, uses the Okabe-Ito colour-blind-safe palette, and never relies on colour alone
(values are printed, series differ by marker shape and are named in a legend,
suppressed rows say "suppressed"). Each figure's label (`Figure.get_label()`) is a plain
text description usable as alternative text; `save_png` stores it in the PNG.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from reports.disclosure import SUPPRESSED

DPI = 150
"""Resolution every chart is saved at."""

WIDTH_INCHES = 8.0

# Okabe & Ito (2008), "Color Universal Design": distinguishable with any colour vision.
BLUE = "#0072B2"
VERMILLION = "#D55E00"
SKY_BLUE = "#56B4E9"
GREY = "#6E6E6E"
BLACK = "#000000"
# NHS "Making Data Count" marks special-cause points orange.
SIGNAL_ORANGE = "#E69F00"

NO_DATA = "no data"


def _figure(rows: int, description: str) -> tuple[Figure, Axes]:
    """A figure tall enough for `rows` labelled rows, on the Agg canvas."""
    height = max(2.5, 1.2 + 0.4 * rows)
    fig = Figure(figsize=(WIDTH_INCHES, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.set_label(description)
    return fig, fig.add_subplot()


def _number(value: Any) -> float | None:
    """`value` as a float, or None when it is missing, suppressed or not a number."""
    if value is None or isinstance(value, str | bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _gap_text(value: Any) -> str:
    """What a row without a figure says instead of a mark."""
    return SUPPRESSED if value is None or value == SUPPRESSED else NO_DATA


def _row_axis(ax: Axes, labels: Sequence[str]) -> None:
    """Labels down the y axis, first label at the top."""
    ax.set_yticks(range(len(labels)), [str(label) for label in labels])
    if not labels:
        # Nothing to plot yet: say so, rather than draw an empty, singular axis.
        ax.text(0.5, 0.5, "Nothing to show yet", ha="center", va="center", transform=ax.transAxes)
        return
    ax.set_ylim(len(labels) - 0.5, -0.5)


def _check_lengths(labels: Sequence[Any], **series: Sequence[Any]) -> None:
    for name, values in series.items():
        if len(values) != len(labels):
            raise ValueError(f"{name} has {len(values)} values for {len(labels)} labels")


def response_rate_bars(
    labels: Sequence[str],
    rates: Sequence[float | None],
    suppressed: Sequence[bool],
    *,
    title: str = "Response rate",
    xlabel: str = "Completed as a share of invited",
) -> Figure:
    """Horizontal bars of response rates (fractions 0-1, drawn as 0-100%), each labelled
    with its percentage. A suppressed group (flagged in `suppressed`, or whose rate is
    `SUPPRESSED`) has no bar and the text "suppressed"; a missing rate says "no data".
    """
    _check_lengths(labels, rates=rates, suppressed=suppressed)
    fig, ax = _figure(len(labels), f"{title}: horizontal bar chart by group.")
    for row, (rate, hidden) in enumerate(zip(rates, suppressed, strict=True)):
        value = None if hidden else _number(rate)
        if value is None:
            text = SUPPRESSED if hidden or rate == SUPPRESSED else NO_DATA
            ax.text(1, row, text, va="center", style="italic", color=GREY)
            continue
        if not 0 <= value <= 1:
            raise ValueError(f"rate {value!r} for {labels[row]!r} is not a fraction 0-1")
        ax.barh(row, value * 100, color=BLUE, height=0.6)
        ax.text(value * 100 + 1, row, f"{value:.0%}", va="center")
    _row_axis(ax, labels)
    ax.set_xlim(0, 100)
    ax.xaxis.set_major_formatter(PercentFormatter(100))
    ax.set(title=title, xlabel=xlabel)
    ax.grid(axis="x", color="#DDDDDD")
    ax.set_axisbelow(True)
    return fig


def prepost_ci(
    labels: Sequence[str],
    diffs: Sequence[float | None],
    lows: Sequence[float | None],
    highs: Sequence[float | None],
    *,
    title: str = "Change from before to after",
    xlabel: str = "Mean difference, after minus before, with 95% confidence interval",
) -> Figure:
    """Each row's mean difference as a point with its 95% CI as an error bar, a vertical
    line at zero (no change) and the figures printed at the right. A row whose
    difference is None or `SUPPRESSED` shows the text "suppressed" instead (NaN: "no
    data"); a row without CI bounds shows the point alone.
    """
    _check_lengths(labels, diffs=diffs, lows=lows, highs=highs)
    fig, ax = _figure(len(labels), f"{title}: mean differences with 95% CIs by row.")
    ax.axvline(0, color=BLACK, linewidth=1, gid="zero")
    shown = []
    for row, (diff, low, high) in enumerate(zip(diffs, lows, highs, strict=True)):
        mean = _number(diff)
        if mean is None:
            ax.text(0, row, f" {_gap_text(diff)}", va="center", style="italic", color=GREY)
            continue
        lo, hi = _number(low), _number(high)
        shown.append((row, mean, mean if lo is None else lo, mean if hi is None else hi))
        interval = "" if lo is None or hi is None else f" ({lo:+.2f} to {hi:+.2f})"
        ax.annotate(
            f"{mean:+.2f}{interval}",
            xy=(1.02, row),
            xycoords=("axes fraction", "data"),
            va="center",
        )
    if shown:
        rows, means, los, his = (np.array(column) for column in zip(*shown, strict=True))
        ax.errorbar(means, rows, xerr=[means - los, his - means], fmt="o", color=BLUE, capsize=4)
        reach = max(np.abs(los).max(), np.abs(his).max()) * 1.15 or 1.0
        ax.set_xlim(-reach, reach)
    _row_axis(ax, labels)
    ax.set(title=title, xlabel=xlabel)
    return fig


def self_vs_others(
    labels: Sequence[str],
    self_means: Sequence[float | None],
    others_means: Sequence[float | None],
    *,
    title: str = "Self-rating and others' ratings by item",
    xlabel: str = "Mean rating",
    scale: tuple[float, float] | None = None,
) -> Figure:
    """A dot plot per item: the self-rating (blue circle) and the others' mean (vermillion
    diamond), joined by a grey line so the gap reads at a glance. A missing value is
    named in text: "others: suppressed" for None or `SUPPRESSED`, "others: no data" for
    NaN. `scale` fixes the x axis (e.g. (1, 5)).
    """
    _check_lengths(labels, self_means=self_means, others_means=others_means)
    fig, ax = _figure(len(labels), f"{title}: dot plot, self and others per item.")
    series = (("Self", self_means, "o", BLUE), ("Others", others_means, "D", VERMILLION))
    for row, pair in enumerate(zip(self_means, others_means, strict=True)):
        values = [_number(v) for v in pair]
        if None not in values:
            ax.plot(values, [row, row], color="#BBBBBB", linewidth=2, zorder=1)
        gaps = [
            f"{name.lower()}: {_gap_text(raw)}"
            for (name, *_), raw, value in zip(series, pair, values, strict=True)
            if value is None
        ]
        if gaps:
            ax.annotate(
                "; ".join(gaps), xy=(1.02, row), xycoords=("axes fraction", "data"), va="center"
            )
    for name, means, marker, colour in series:
        points = [(_number(v), row) for row, v in enumerate(means) if _number(v) is not None]
        xs, ys = ([p[i] for p in points] for i in (0, 1))
        ax.plot(xs, ys, linestyle="none", marker=marker, color=colour, markersize=8, label=name)
    _row_axis(ax, labels)
    if scale is not None:
        ax.set_xlim(scale[0] - 0.2, scale[1] + 0.2)
    ax.set(title=title, xlabel=xlabel)
    ax.grid(axis="x", color="#DDDDDD")
    fig.legend(loc="outside lower center", ncols=2, frameon=False)
    return fig


def xmr_chart(
    labels: Sequence[str],
    values: Sequence[float | None],
    mean: float | Sequence[float | None] | None,
    unpl: float | Sequence[float | None] | None,
    lnpl: float | Sequence[float | None] | None,
    signal_indices: Sequence[int],
    title: str,
    *,
    ylabel: str = "Value",
) -> Figure:
    """The X chart of an XmR pair: values joined by a line (a None value leaves a gap),
    the mean as a solid line, the natural process limits as dashed lines, and the points
    at `signal_indices` as larger orange diamonds (special cause, as in NHS Making Data
    Count). `mean`, `unpl` and `lnpl` are one number, or one per point when the limits were
    recalculated after a change; None leaves the line out.
    """
    _check_lengths(labels, values=values)
    n = len(labels)
    if any(not 0 <= i < n for i in signal_indices):
        raise ValueError(f"signal_indices must lie within 0..{n - 1}")
    fig = Figure(figsize=(WIDTH_INCHES, 4.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.set_label(f"{title}: XmR chart of {n} points with mean and process limits.")
    ax = fig.add_subplot()
    x = np.arange(n)
    y = np.array([np.nan if _number(v) is None else _number(v) for v in values], dtype=float)
    ax.plot(x, y, color=GREY, marker="o", markersize=5, label=ylabel, gid="values")
    # One legend entry covers both limits: they share a style and their place says which.
    for level, name, style, gid in (
        (mean, "Mean", "-", "mean"),
        (unpl, "Process limits", "--", "unpl"),
        (lnpl, "_nolegend_", "--", "lnpl"),
    ):
        line = _level(level, n)
        if line is not None:
            ax.plot(
                x,
                line,
                color=BLACK,
                linestyle=style,
                linewidth=1,
                label=name,
                gid=gid,
                drawstyle="steps-mid",
            )
    signals = [i for i in sorted(set(signal_indices)) if not math.isnan(y[i])]
    if signals:
        ax.plot(
            x[signals],
            y[signals],
            linestyle="none",
            marker="D",
            markersize=9,
            color=SIGNAL_ORANGE,
            markeredgecolor=BLACK,
            label="Special cause (signal)",
            gid="signals",
        )
    tilted = {"rotation": 45, "ha": "right"} if n > 8 else {}
    ax.set_xticks(x, [str(label) for label in labels], **tilted)
    if n > 24:
        for index, tick in enumerate(ax.get_xticklabels()):
            tick.set_visible(index % math.ceil(n / 24) == 0)
    ax.set(title=title, ylabel=ylabel, xlabel="Period")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


def _level(level: float | Sequence[float | None] | None, n: int) -> np.ndarray | None:
    """A centre or limit line as one y value per point (NaN where unknown)."""
    if level is None:
        return None
    if isinstance(level, Sequence) and not isinstance(level, str):
        if len(level) != n:
            raise ValueError(f"a per-point line needs {n} values, got {len(level)}")
        return np.array([np.nan if _number(v) is None else _number(v) for v in level])
    return np.full(n, float(level))


def save_png(fig: Figure, path: str | Path | BinaryIO) -> None:
    """Write `fig` as a PNG at `DPI`, with its title and description as PNG metadata,
    to a file path or a binary file object (such as `io.BytesIO` for a web response).

    Then the figure is closed: cleared, so a saved chart cannot be drawn on again by
    mistake, and dropped from pyplot's figure list if a caller made it with pyplot (ours
    never are, so nothing global keeps them alive).
    """
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    metadata = {"Title": titles[0] if titles else "", "Description": fig.get_label()}
    fig.savefig(path, format="png", dpi=DPI, metadata=metadata)
    fig.clear()
    pyplot = sys.modules.get("matplotlib.pyplot")  # importing it here would pick a backend
    if pyplot is not None:
        pyplot.close(fig)
