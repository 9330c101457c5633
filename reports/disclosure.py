"""Disclosure control: the one place that decides whether a figure may be shown.

Every table the reporting layer produces goes through here before it reaches a CSV, a
workbook, a chart, the dashboard or the API. Three rules, each closing one way of learning
about fewer than `threshold` people (the programme's anonymity threshold):

1. Primary suppression (`too_small`, `protect`): every figure of a group of fewer than
   `threshold` people is replaced by `SUPPRESSED`. Tables of invitations count *people*
   (distinct `person_id`), not invitations, because one person may hold several
   invitations in a group (a manager's self-report and 360 self-rating in the same wave).
   An empty group (0) reveals nobody and is shown.
2. Complementary suppression (`protect`): within a parent group (e.g. one wave), if the
   suppressed rows hold fewer than `threshold` people between them, the parent's total
   minus the rows shown would give their figures back. So the next smallest rows are
   suppressed too until the suppressed rows hold at least `threshold` people and are at
   least two (or every row is suppressed). The parent total is assumed to be known whether
   or not this table shows it (another table or the weekly email may), so the rule applies
   either way; the total row itself is never suppressed for this reason, only when it is
   itself too small. A table that breaks down along several columns (wave x home x role)
   is protected along each of them (`crossed`), repeatedly, until every line is safe.
3. Filtered reports (`subset_allowed`, `restrict_to`): a report restricted to a subset
   (one home, one role) is allowed only when the subset and its complement are each 0 or at
   least `threshold` people; otherwise the filtered report, or the unfiltered report minus
   it, describes fewer than `threshold` people. A refusal raises `DisclosureError`.

Limits, as for any suppression heuristic that is not audited by linear programming:
`protect` makes every single subtraction (a known total minus the rows shown in one line)
safe, but a combination of several lines can occasionally still pin down a cell, and a
line with only one row (a home with one role) equals its total wherever that is published.
`restrict_to` compares a filtered report with the unfiltered one; filters that can be
nested (a set of homes, then the same set plus one) must be checked against each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

SUPPRESSED = "suppressed"
"""The marker that replaces every figure of a suppressed group, in every output."""

ALL = "All"
"""The label of a parent group's total row (e.g. all homes of a wave)."""


class DisclosureError(ValueError):
    """A report was refused because it would describe fewer people than the threshold."""


def too_small(n: int, threshold: int) -> bool:
    """Whether a group of `n` people is too small to report (0 < n < threshold).

    An empty group (n = 0) reveals nobody and is shown as 0.
    """
    return 0 < n < threshold


def subset_allowed(n_subset: int, n_total: int, threshold: int) -> bool:
    """Whether a report filtered to `n_subset` of `n_total` people may be shown.

    Both the subset and its complement (`n_total - n_subset`) must be 0 or at least
    `threshold`: the complement is what the unfiltered report minus the filtered one
    describes.
    """
    return not too_small(n_subset, threshold) and not too_small(n_total - n_subset, threshold)


def restrict_to(
    frame: pd.DataFrame,
    keep: pd.Series,
    threshold: int,
    what: str,
    person_col: str = "person_id",
) -> pd.DataFrame:
    """The rows of `frame` where `keep` is true, or `DisclosureError` if that filter is refused.

    People are counted as distinct `person_col` on each side. A person with rows on both
    sides (an SMS and an email invitation, filtered by channel) counts on both, because the
    difference between the reports describes their left-out rows. The message names the
    filter (`what`, e.g. "home = 'Rose Court'") and which side is too small, never a count:
    a count of 1-4 would itself be the disclosure.
    """
    n_in = frame.loc[keep, person_col].nunique()
    n_out = frame.loc[~keep, person_col].nunique()
    # n_in + n_out is "people in the subset plus people left out", so the complement the
    # rule checks is exactly n_out even when a person sits on both sides.
    if subset_allowed(n_in, n_in + n_out, threshold):
        return frame.loc[keep]
    if too_small(n_in, threshold):
        side = f"it would describe fewer than {threshold} people"
    else:
        side = (
            f"it would leave out fewer than {threshold} people, whose figures the full "
            "report minus this one would reveal"
        )
    raise DisclosureError(f"report filtered to {what} refused: {side}")


def protect(
    table: pd.DataFrame,
    count_col: str,
    figure_cols: Sequence[str],
    within: Sequence[str],
    threshold: int,
    *,
    total_col: str | None = None,
    members_col: str | None = None,
    crossed: Sequence[str] = (),
    totals_known: bool = True,
) -> pd.DataFrame:
    """`table` with primary and complementary suppression applied to `figure_cols`.

    `count_col` holds each row's number of people. The rows of each parent group (same
    `within` values; no `within`: the whole table) are one line of the table; a row whose
    `total_col` is `ALL` is that line's total, suppressed only when too small itself.

    In every line, suppressed rows must hold at least `threshold` people between them and
    be at least two (one suppressed row alone would be the known total minus the rest); a
    suppressed total needs a suppressed row under it (or the rows would add up to it). The
    smallest shown rows are suppressed until that holds. `crossed` names columns of
    `within` that the table also breaks down along (home and role in a wave x home x role
    table): their lines (same values in every other key column) are protected the same way,
    their totals assumed published elsewhere; the rules are applied until nothing changes.

    `members_col`, when given, holds each row's people as a set of ids: suppressed rows are
    then counted as the size of their union, which is right when rows share people (by
    instrument or channel); without it their counts are summed, which is right when each
    person is in one row (by home or role). Other columns are returned unchanged.

    `totals_known=False` says that the total of a line without an `ALL` row is published
    nowhere, in this table or any other: nothing can then be worked out by subtraction,
    so a lone small row is suppressed without a complementary one. Crossed lines always
    count their totals as known.
    """
    if not set(crossed) <= set(within):
        raise ValueError(f"crossed columns {list(crossed)} must be among within {list(within)}")
    rows = table.reset_index(drop=True)
    counts = rows[count_col].astype(int).to_numpy()
    members = list(rows[members_col]) if members_col else None
    hidden = np.array([too_small(int(n), threshold) for n in counts], dtype=bool)
    lines = _lines(rows, within, total_col, crossed, counts, totals_known)
    while any([_complete(line, hidden, counts, members, threshold) for line in lines]):
        pass  # one line's new suppression can leave another line unsafe: repeat until stable
    out = table.astype({col: object for col in figure_cols})
    out.loc[hidden, list(figure_cols)] = SUPPRESSED
    return out


@dataclass(frozen=True)
class _Line:
    """Row positions of one line of a table: its cells, smallest first, and its total(s)."""

    cells: list[int]
    totals: list[int]
    total_known: bool = True


def _lines(
    rows: pd.DataFrame,
    within: Sequence[str],
    total_col: str | None,
    crossed: Sequence[str],
    counts: np.ndarray,
    totals_known: bool = True,
) -> list[_Line]:
    """Every line of the table: along its breakdown, then along each crossed column."""
    keys = [*within, total_col] if total_col else list(within)
    specs = [(list(within), total_col)] + [([k for k in keys if k != d], d) for d in crossed]
    lines = []
    for n, (parents, dimension) in enumerate(specs):
        for positions in _groups(rows, parents):
            is_total = (
                rows[dimension].to_numpy()[positions] == ALL
                if dimension
                else np.zeros(len(positions), dtype=bool)
            )
            cells = sorted(positions[~is_total], key=lambda i: (counts[i], i))
            known = totals_known or n > 0 or bool(is_total.any())
            lines.append(_Line(cells, list(positions[is_total]), known))
    return lines


def _groups(rows: pd.DataFrame, parents: list[str]) -> list[np.ndarray]:
    """Positions of the rows of each parent group (all rows when `parents` is empty)."""
    if not parents:
        return [np.arange(len(rows))]
    keys = parents[0] if len(parents) == 1 else parents
    return list(rows.groupby(keys, sort=False, dropna=False).indices.values())


def _complete(
    line: _Line,
    hidden: np.ndarray,
    counts: np.ndarray,
    members: list[frozenset[object]] | None,
    threshold: int,
) -> bool:
    """Suppress the smallest shown cells of `line` until it is safe; True if any was."""
    suppressed = [i for i in line.cells if hidden[i]]
    shown = [i for i in line.cells if not hidden[i]]
    changed = False
    while shown and _unsafe(line, suppressed, hidden, counts, members, threshold):
        cell = shown.pop(0)
        hidden[cell] = True
        suppressed.append(cell)
        changed = True
    return changed


def _unsafe(
    line: _Line,
    suppressed: list[int],
    hidden: np.ndarray,
    counts: np.ndarray,
    members: list[frozenset[object]] | None,
    threshold: int,
) -> bool:
    """Whether subtraction within the line could give away a suppressed figure."""
    if not line.total_known:
        return False
    if not suppressed:
        return any(hidden[t] for t in line.totals)
    if members is None:
        people = int(counts[suppressed].sum())
    else:
        people = len(frozenset().union(*(members[i] for i in suppressed)))
    return len(suppressed) < 2 or people < threshold
