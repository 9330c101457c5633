"""Pre/post change for matched respondents, item by item.

A pair is the same respondent (and, for a 360, the same subject and relation) answering
the same item in both waves. For each item: n pairs, both means, the mean difference with
its 95% confidence interval from the paired t distribution, and the standardised effect
d_z (mean difference / SD of differences). Items with fewer pairs than the anonymity
threshold are suppressed.
"""

from __future__ import annotations

import math

import pandas as pd
from scipy import stats

from reports.response_rates import SUPPRESSED

COLUMNS = [
    "instrument",
    "relation",
    "item_id",
    "n_pairs",
    "mean_pre",
    "mean_post",
    "mean_diff",
    "ci95_low",
    "ci95_high",
    "d_z",
]


def prepost(answers: pd.DataFrame, pre: str, post: str, threshold: int) -> pd.DataFrame:
    """Matched pre/post change per instrument, rater relation and item.

    `answers` is `reports.frames.answers_frame`; `pre`/`post` are wave keys.
    """
    keys = ["instrument", "relation", "item_id", "person_id", "subject_id"]
    data = answers.assign(
        relation=answers["relation"].fillna("-"), subject_id=answers["subject_id"].fillna(-1)
    )
    before = data[data["wave"] == pre].set_index(keys)["value"]
    after = data[data["wave"] == post].set_index(keys)["value"]
    pairs = pd.concat({"pre": before, "post": after}, axis=1, join="inner").reset_index()
    rows = []
    for (instrument, relation, item_id), group in pairs.groupby(
        ["instrument", "relation", "item_id"], sort=True
    ):
        rows.append(_summarise(instrument, relation, item_id, group, threshold))
    return pd.DataFrame(rows, columns=COLUMNS)


def _summarise(
    instrument: str, relation: str, item_id: str, group: pd.DataFrame, threshold: int
) -> list[object]:
    n = len(group)
    head: list[object] = [instrument, relation, item_id]
    if n < threshold:
        return [*head, *[SUPPRESSED] * 7]
    diff = group["post"].astype(float) - group["pre"].astype(float)
    mean, sd = diff.mean(), diff.std(ddof=1)
    half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    d_z = mean / sd if sd > 0 else math.nan
    return [
        *head,
        n,
        round(group["pre"].mean(), 2),
        round(group["post"].mean(), 2),
        round(mean, 2),
        round(mean - half, 2),
        round(mean + half, 2),
        round(d_z, 2),
    ]
