"""Response rates: completed invitations over invitations, by whatever grouping is asked.

Groups with fewer invitations than the programme's anonymity threshold are suppressed:
their counts and rate are replaced by a marker, so that a small home's figure cannot be
read or deduced from the table.
"""

from __future__ import annotations

import pandas as pd

from reports.disclosure import SUPPRESSED

FUNNEL = ["sent", "delivered", "started", "completed"]


def response_rates(invitations: pd.DataFrame, by: list[str], threshold: int) -> pd.DataFrame:
    """Invited, funnel counts and response rate (completed / invited) per group.

    `invitations` is `reports.frames.invitations_frame` (with its `reached_<stage>` columns:
    the furthest stage each invitation ever reached). Rates are fractions 0-1; rows of
    groups smaller than `threshold` carry `suppressed` in every figure.
    """
    if invitations.empty:
        return pd.DataFrame(columns=[*by, "invited", *FUNNEL, "response_rate"])
    table = invitations.groupby(by, sort=True).agg(
        invited=("invitation_id", "count"),
        **{stage: (f"reached_{stage}", "sum") for stage in FUNNEL},
    )
    table["response_rate"] = (table["completed"] / table["invited"]).round(3)
    table = table.reset_index().astype(object)
    small = table["invited"] < threshold
    table.loc[small, ["invited", *FUNNEL, "response_rate"]] = SUPPRESSED
    return table
