"""XmR charts (individuals and moving range) and their signals, as NHS England's
"Making Data Count" programme reads them.

Method (Wheeler, "Understanding Variation", 2000; NHS England/Improvement, "Making Data
Count: Strengthening your decisions", 2019, and its "plot the dots" tools):

- The centre line is the mean of the points. The moving range of a point is its absolute
  difference from the point before; `mr_bar` is the mean moving range.
- Moving ranges above 3.268 x mr_bar (the upper range limit, D4 for ranges of two) are
  screened out and mr_bar is recomputed once, so one wild jump does not widen the limits.
- Natural process limits: mean +- 2.66 x mr_bar (2.66 = 3 / d2, d2 = 1.128: three sigma).
  Near limits: mean +- 2/3 of that distance (two sigma).
- Fewer than 12 points give trial limits, which may move as points are added.
- Signals (special-cause variation): a point beyond a process limit; a shift, 7 or more
  consecutive points on one side of the mean (a point exactly on the mean breaks the run);
  a trend, 7 or more consecutive points each higher (or each lower) than the one before
  (an equal pair breaks it); two out of three consecutive points beyond the same near
  limit (the Western Electric zone A test: a point beyond the process limit counts too).

Missing points (a suppressed month, say) are gaps: they are left out of the mean and no
moving range is taken across them (a range over two intervals would not be a
point-to-point range), while the run, trend and two-in-three rules read the points that
are present, in order, as the chart shows them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from reports.disclosure import SUPPRESSED

PROCESS_LIMIT_FACTOR = 2.66
NEAR_LIMIT_FACTOR = PROCESS_LIMIT_FACTOR * 2 / 3
SCREENING_FACTOR = 3.268
RUN_LENGTH = 7
TREND_LENGTH = 7
TRIAL_POINTS = 12
RULES = ("beyond_limits", "shift", "trend", "two_of_three")
"""Signal rule names, in the order a chart's notes list them."""


@dataclass(frozen=True)
class Signal:
    """One special-cause signal: which rule, which way ("up" or "down"), which points
    (indices into the values given to `xmr`, gaps included)."""

    rule: str
    direction: str
    indices: tuple[int, ...]


@dataclass(frozen=True)
class XmRResult:
    """An XmR chart's figures: the points, centre line, limits and signals (unrounded)."""

    values: tuple[float, ...]
    labels: tuple[str, ...]
    mean: float
    mr_bar: float
    unpl: float
    lnpl: float
    upper_near: float
    lower_near: float
    moving_ranges: tuple[float, ...]
    screened: tuple[int, ...]
    trial_limits: bool
    signals: tuple[Signal, ...]

    @property
    def n_points(self) -> int:
        """How many points are present (gaps not counted)."""
        return sum(not math.isnan(v) for v in self.values)

    def rules_at(self, index: int) -> tuple[str, ...]:
        """The rules whose signals include the point at `index`, in `RULES` order."""
        hit = {s.rule for s in self.signals if index in s.indices}
        return tuple(rule for rule in RULES if rule in hit)


def xmr(
    values: Sequence[float | None | str],
    labels: Sequence[str] | None = None,
    *,
    screen: bool = True,
) -> XmRResult:
    """The XmR chart of `values` in time order, with its signals (see the module notes).

    A value of None, NaN or `SUPPRESSED` is a gap. `labels` name the points in `reading`
    (default "point 1", "point 2", ...). `screen=False` skips the moving-range screening.
    """
    points = tuple(_as_point(v) for v in values)
    default = (f"point {i + 1}" for i in range(len(points)))
    names = tuple(labels) if labels is not None else tuple(default)
    if len(names) != len(points):
        raise ValueError(f"{len(names)} labels for {len(points)} values")
    present = [v for v in points if not math.isnan(v)]
    mean = sum(present) / len(present) if present else math.nan
    ranges = _moving_ranges(points)
    mr_bar, screened = _mr_bar(ranges, screen)
    half_width = PROCESS_LIMIT_FACTOR * mr_bar
    near_width = NEAR_LIMIT_FACTOR * mr_bar
    limits = (mean + half_width, mean - half_width, mean + near_width, mean - near_width)
    return XmRResult(
        values=points,
        labels=names,
        mean=mean,
        mr_bar=mr_bar,
        unpl=limits[0],
        lnpl=limits[1],
        upper_near=limits[2],
        lower_near=limits[3],
        moving_ranges=ranges,
        screened=screened,
        trial_limits=len(present) < TRIAL_POINTS,
        signals=_signals(points, mean, limits),
    )


def _as_point(value: float | None | str) -> float:
    """A value as a float, NaN for a gap (None, NaN, pandas' NA or `SUPPRESSED`)."""
    if isinstance(value, str):
        if value == SUPPRESSED:
            return math.nan
        raise ValueError(f"not a number: {value!r}")
    return math.nan if pd.isna(value) else float(value)


def _moving_ranges(points: tuple[float, ...]) -> tuple[float, ...]:
    """|x_i - x_(i-1)|; NaN for the first point and on either side of a gap."""
    return (math.nan,) + tuple(abs(b - a) for a, b in zip(points, points[1:], strict=False))


def _mr_bar(ranges: tuple[float, ...], screen: bool) -> tuple[float, tuple[int, ...]]:
    """Mean moving range, after one screening pass; and the indices screened out."""
    usable = [(i, r) for i, r in enumerate(ranges) if not math.isnan(r)]
    if not usable:
        return math.nan, ()
    first = sum(r for _, r in usable) / len(usable)
    screened = tuple(i for i, r in usable if screen and r > SCREENING_FACTOR * first)
    kept = [r for i, r in usable if i not in screened]
    return sum(kept) / len(kept), screened


def _signals(
    points: tuple[float, ...], mean: float, limits: tuple[float, float, float, float]
) -> tuple[Signal, ...]:
    """Every signal of the four rules, read over the points present."""
    index = [i for i, v in enumerate(points) if not math.isnan(v)]
    xs = [points[i] for i in index]
    unpl, lnpl, upper_near, lower_near = limits
    found = _beyond(xs, unpl, lnpl) + _shifts(xs, mean) + _trends(xs)
    found += _two_of_three(xs, upper_near, lower_near)
    # Rules work on positions among the points present; report indices of the input.
    mapped = [Signal(s.rule, s.direction, tuple(index[j] for j in s.indices)) for s in found]
    return tuple(sorted(mapped, key=lambda s: (s.indices[0], RULES.index(s.rule))))


def _beyond(xs: list[float], unpl: float, lnpl: float) -> list[Signal]:
    """One signal per point above the upper or below the lower process limit."""
    out = []
    for j, x in enumerate(xs):
        if x > unpl:
            out.append(Signal("beyond_limits", "up", (j,)))
        elif x < lnpl:
            out.append(Signal("beyond_limits", "down", (j,)))
    return out


def _runs(marks: list[int]) -> list[tuple[int, int, int]]:
    """Maximal runs of equal non-zero marks: (mark, first position, length)."""
    runs, start = [], 0
    for j in range(1, len(marks) + 1):
        if j == len(marks) or marks[j] != marks[start]:
            if marks[start] != 0:
                runs.append((marks[start], start, j - start))
            start = j
    return runs


def _direction(mark: int) -> str:
    return "up" if mark > 0 else "down"


def _shifts(xs: list[float], mean: float) -> list[Signal]:
    """Runs of RUN_LENGTH or more points on one side of the mean."""
    sides = [(x > mean) - (x < mean) for x in xs]
    return [
        Signal("shift", _direction(side), tuple(range(first, first + length)))
        for side, first, length in _runs(sides)
        if length >= RUN_LENGTH
    ]


def _trends(xs: list[float]) -> list[Signal]:
    """Runs of TREND_LENGTH or more points, each above (or below) the one before."""
    steps = [(b > a) - (b < a) for a, b in zip(xs, xs[1:], strict=False)]
    # A run of k equal steps joins k + 1 points.
    return [
        Signal("trend", _direction(step), tuple(range(first, first + length + 1)))
        for step, first, length in _runs(steps)
        if length + 1 >= TREND_LENGTH
    ]


def _two_of_three(xs: list[float], upper_near: float, lower_near: float) -> list[Signal]:
    """Two (or three) of three consecutive points beyond the same near limit; the points
    beyond it in overlapping qualifying windows make one signal."""
    out = []
    for direction, beyond in (
        ("up", [x > upper_near for x in xs]),
        ("down", [x < lower_near for x in xs]),
    ):
        episode: list[int] = []
        last_start = -3
        for start in range(len(xs) - 2):
            window = [j for j in range(start, start + 3) if beyond[j]]
            if len(window) < 2:
                continue
            if episode and start > last_start + 2:
                out.append(Signal("two_of_three", direction, tuple(episode)))
                episode = []
            episode = sorted(set(episode) | set(window))
            last_start = start
        if episode:
            out.append(Signal("two_of_three", direction, tuple(episode)))
    return out


def reading(result: XmRResult, what: str = "morale") -> str:
    """A short, plain-language account of the chart: each signal with its points' labels,
    or that there is no signal; and whether the limits are trial limits or leave out gaps.
    Facts about the figures only: it does not say why, or who."""
    subject = what[:1].upper() + what[1:]
    if math.isnan(result.mr_bar):
        return f"Too few {what} points to read: limits need two points side by side."
    usual = f"{result.lnpl:.2f} to {result.unpl:.2f}"
    sentences = [_signal_sentence(s, result, subject, usual) for s in result.signals]
    if not sentences:
        sentences.append(
            f"No signal of change: the points vary within the limits ({usual}, "
            f"average {result.mean:.2f})."
        )
    gaps = len(result.values) - result.n_points
    if gaps:
        sentences.append(
            f"{gaps} point{'s' if gaps > 1 else ''} had too few answers to show "
            "and are left out of the limits."
        )
    if result.trial_limits:
        sentences.append(
            f"These are trial limits from {result.n_points} points (fewer than "
            f"{TRIAL_POINTS}): they may move as more points come in."
        )
    return " ".join(sentences)


def _signal_sentence(signal: Signal, result: XmRResult, subject: str, usual: str) -> str:
    names = [result.labels[i] for i in signal.indices]
    up = signal.direction == "up"
    span = f"{len(names)} points in a row, from {names[0]} to {names[-1]}"
    if signal.rule == "beyond_limits":
        where = "rose above" if up else "fell below"
        return f"{subject} {where} its usual range ({usual}) {_at(names[0])}."
    if signal.rule == "shift":
        side = "above" if up else "below"
        return f"{subject} stayed {side} its average ({result.mean:.2f}) for {span}: a shift."
    if signal.rule == "trend":
        return f"{subject} {'rose' if up else 'fell'} for {span}: a trend."
    edge = "top" if up else "bottom"
    listed = ", ".join(names[:-1]) + f" and {names[-1]}"
    return f"{subject} was near the {edge} of its usual range {_at(listed)}."


def _at(when: str) -> str:
    """'in March 2027', but 'at point 5' for the default labels."""
    return f"at {when}" if when.startswith("point ") else f"in {when}"
