"""Response rates: completed invitations over invitations, by whatever grouping is asked.

Groups with fewer invitations than the programme's anonymity threshold are suppressed:
their counts and rate are replaced by a marker, so that a small home's figure cannot be
read or deduced from the table.
"""

from __future__ import annotations

import pandas as pd

SUPPRESSED = "suppressed"
FUNNEL = ["sent", "delivered", "started", "completed"]
# Statuses that mean the invitation reached at least that stage of the funnel.
_REACHED = {
    "sent": {"sent", "delivered", "started", "completed"},
    "delivered": {"delivered", "started", "completed"},
    "started": {"started", "completed"},
    "completed": {"completed"},
}


def response_rates(invitations: pd.DataFrame, by: list[str], threshold: int) -> pd.DataFrame:
    """Invited, funnel counts and response rate (completed / invited) per group.

    `invitations` is `reports.frames.invitations_frame`. Rates are fractions 0-1; rows of
    groups smaller than `threshold` carry `suppressed` in every figure.
    """
    if invitations.empty:
        return pd.DataFrame(columns=[*by, "invited", *FUNNEL, "response_rate"])
    frame = invitations.assign(
        **{stage: invitations["status"].isin(states) for stage, states in _REACHED.items()}
    )
    table = frame.groupby(by, sort=True).agg(
        invited=("invitation_id", "count"), **{stage: (stage, "sum") for stage in FUNNEL}
    )
    table["response_rate"] = (table["completed"] / table["invited"]).round(3)
    table = table.reset_index().astype(object)
    small = table["invited"] < threshold
    table.loc[small, ["invited", *FUNNEL, "response_rate"]] = SUPPRESSED
    return table
