"""Response rates: the funnel, AAPOR dispositions and outcome rates, per group.

A group is any combination of invitation columns (wave, instrument, home, role, channel,
cohort...). The last column of `by` is the breakdown; the columns before it are the parent
group, and each parent group gets a total row labelled `ALL` ("All") in that last column
(for `by=["wave", "home"]`: one "All" row per wave, over all homes). The total is computed
from the invitations, not by adding rows, so a person counts once in it.

Disclosure control (`reports.disclosure.protect`) counts people, i.e. distinct
`person_id`, not invitations: every figure of a row with fewer than `threshold` people is
`SUPPRESSED`, and further rows are suppressed where a total minus the rows shown would give
the suppressed rows away: within each parent group (against its "All" row), and, for a
table of three or more columns, along every other column except the wave (a wave x home x
role table is protected against the wave x role and wave x home tables).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from reports.disclosure import ALL, SUPPRESSED, protect
from reports.dispositions import (
    AAPOR_RATES,
    DISPOSITION_CODES,
    FUNNEL_STAGES,
    aapor_rates,
    dispositions,
    reached_stages,
)

__all__ = [
    "FUNNEL",
    "FUNNEL_COLUMNS",
    "RESPONSE_RATE_COLUMNS",
    "SUPPRESSED",
    "funnel",
    "response_rates",
]

FUNNEL = list(FUNNEL_STAGES)

RESPONSE_RATE_COLUMNS = (
    "invited",
    "people",
    *FUNNEL_STAGES,
    *DISPOSITION_CODES,
    "eligible",
    *AAPOR_RATES,
    "response_rate",
)
"""The figure columns of `response_rates`, which come after the `by` columns:

- invited: invitations; people: distinct people invited (the count suppression uses);
- sent, delivered, started, completed: invitations that reached the stage or a later one;
- I, P, R, NC, O, UH, UO, NE: invitations with each AAPOR disposition
  (`reports.dispositions`); eligible: I + P + R + NC + O (known eligible);
- RR1, RR2, COOP1, CON1: AAPOR outcome rates, 0-1, NaN when undefined;
- response_rate: completed / invited (submitted questionnaires, whatever their share of
  items answered), 0-1.
"""

FUNNEL_COLUMNS = ("stage", "count", "share")
"""The columns of `funnel` after the `by` columns: stage (invited, sent, delivered,
started, completed), count (invitations), share (count / invited, 0-1)."""

NOT_SUMMED = ("wave", "instrument")
"""Columns no carepulse output adds up across: each wave is reported on its own (a wave
asks the same people again, so a total over waves counts invitations, not people), and
so is each instrument (AAPOR rates are per questionnaire; a total would add up
invitations to different surveys). Lines along them are protected only when they are
the last `by` column and its "All" rows are shown (`totals`). Every other `by` column is
protected as a crossed dimension."""

_MEMBERS = "_members"


def response_rates(
    invitations: pd.DataFrame,
    by: Sequence[str],
    threshold: int,
    *,
    totals: bool | None = None,
) -> pd.DataFrame:
    """Funnel, dispositions and rates per group of `by`, with disclosure control applied.

    `invitations` is `reports.frames.invitations_frame`. If it has no `disposition` column,
    `reports.dispositions.dispositions` is applied with its defaults (Europe/London, 80%
    and 50%); call it yourself first for other settings. Columns: `by`, then
    `RESPONSE_RATE_COLUMNS`. Rows are sorted by group, each parent's "All" row (when
    `totals`) last. Numbers are unrounded.

    `totals` defaults to "unless the last `by` column is in `NOT_SUMMED`": no total across
    instruments or waves. Without totals, the parents' totals are taken to be published
    nowhere (a lone small row is then suppressed without a complementary one): never show
    them elsewhere.
    """
    by = list(by)
    if not by:
        raise ValueError("response_rates needs at least one column to group by")
    if totals is None:
        totals = by[-1] not in NOT_SUMMED
    cases = invitations if "disposition" in invitations else dispositions(invitations)
    if cases.empty:
        return pd.DataFrame(columns=[*by, *RESPONSE_RATE_COLUMNS])
    data = _case_counts(cases, by)
    table = _tally(data, by)
    if totals:
        table = _with_totals(table, _tally(data.assign(**{by[-1]: ALL}), by), by)
    table = protect(
        table,
        "people",
        RESPONSE_RATE_COLUMNS,
        within=by[:-1],
        threshold=threshold,
        total_col=by[-1],
        members_col=_MEMBERS,
        crossed=[column for column in by[:-1] if column not in NOT_SUMMED],
        totals_known=totals,
    )
    return table[[*by, *RESPONSE_RATE_COLUMNS]]


def _case_counts(cases: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One row per invitation: its groups, person, and 0/1 columns for each funnel stage
    and each disposition, ready to be summed."""
    codes = pd.get_dummies(cases["disposition"]).reindex(
        columns=list(DISPOSITION_CODES), fill_value=False
    )
    return pd.concat(
        [
            cases[[*by, "invitation_id", "person_id"]],
            reached_stages(cases).astype(int),
            codes.astype(int),
        ],
        axis=1,
    )


def _tally(data: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Counts and rates per group; `_members` holds each group's set of person ids."""
    grouped = data.groupby(by, sort=True, dropna=False)
    table = grouped[[*FUNNEL_STAGES, *DISPOSITION_CODES]].sum()
    table.insert(0, "invited", grouped["invitation_id"].count())
    table.insert(1, "people", grouped["person_id"].nunique())
    table[_MEMBERS] = grouped["person_id"].agg(frozenset)
    table["eligible"] = table[["I", "P", "R", "NC", "O"]].sum(axis=1)
    rates = pd.DataFrame(
        [aapor_rates(row) for row in table[list(DISPOSITION_CODES)].to_dict("records")],
        index=table.index,
        columns=list(AAPOR_RATES),
    )
    table = pd.concat([table, rates], axis=1)
    table["response_rate"] = table["completed"] / table["invited"]
    return table.reset_index()


def _with_totals(rows: pd.DataFrame, totals: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The group rows with each parent group's total row placed after them."""
    table = pd.concat([rows, totals], ignore_index=True)
    if len(by) > 1:
        # A stable sort on the parent columns keeps each parent's rows before its total.
        table = table.sort_values(by[:-1], kind="stable", ignore_index=True)
    return table


def funnel(invitations: pd.DataFrame, by: Sequence[str], threshold: int) -> pd.DataFrame:
    """The funnel of each group of `response_rates` in long form, for charts.

    One row per group (including the "All" rows) and stage, stages in funnel order:
    invited, sent, delivered, started, completed. Columns: `by`, then `FUNNEL_COLUMNS`.
    Suppressed groups carry `SUPPRESSED` in count and share, exactly as in
    `response_rates`, which decides them.
    """
    by = list(by)
    table = response_rates(invitations, by, threshold)
    if table.empty:
        return pd.DataFrame(columns=[*by, *FUNNEL_COLUMNS])
    hidden = table["invited"].eq(SUPPRESSED)
    invited = pd.to_numeric(table["invited"].mask(hidden))
    parts = []
    for order, stage in enumerate(["invited", *FUNNEL_STAGES]):
        share = (pd.to_numeric(table[stage].mask(hidden)) / invited).astype(object)
        share[hidden] = SUPPRESSED
        part = table[by].assign(stage=stage, count=table[stage], share=share)
        parts.append(part.assign(_row=table.index, _stage=order))
    long = pd.concat(parts).sort_values(["_row", "_stage"], ignore_index=True)
    return long[[*by, *FUNNEL_COLUMNS]]
