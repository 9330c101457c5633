"""Item scores, scale scores and scale reliability (Cronbach's alpha).

Method, in the order it is applied:

1. Scoring (`score`). Answers are stored as given. An item marked `reverse` in its
   instrument version is reversed as `scale_min + scale_max - value` (on a 1-5 scale,
   5 becomes 1), so that a higher score is always the better outcome. Reversing happens
   here, before any scale is formed, so a scale never mixes directions.
2. Scale scores (`scale_scores`). A respondent's scale score in a wave is the mean of the
   item scores they gave for the scale's items, provided they answered at least
   `min_share` of those items (by default half: 1 of 2, 2 of 3 or 4, 3 of 5 or 6); with
   fewer, the score is missing (NaN) rather than resting on one or two answers. This
   "half the items" prorating rule is the usual one for summated rating scales.
3. Reliability (`reliability`). Cronbach's alpha (Cronbach, 1951) per wave, instrument,
   rater relation and scale, over the respondents who answered every item of the scale
   (listwise complete cases), from sample variances (n - 1):
   alpha = k / (k - 1) * (1 - sum of item variances / variance of the total score).
   Alpha needs two items or more (NaN otherwise) and is suppressed when it would rest on
   fewer complete cases than the programme's anonymity threshold.

Inputs are `reports.frames.answers_frame` and `reports.frames.items_frame`; the functions
are pure (no database, no I/O) and return unrounded numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from reports.disclosure import SUPPRESSED, too_small
from reports.frames import ANSWER_COLUMNS

SCORED_COLUMNS = (*ANSWER_COLUMNS, "score")
"""`score` returns the answers' own columns (answers_frame's) plus `score`."""

SCALE_SCORE_COLUMNS = (
    "cohort",
    "wave",
    "instrument",
    "instrument_version_id",
    "relation",
    "person_id",
    "subject_id",
    "scale",
    "n_items",
    "n_items_answered",
    "score",
)
RELIABILITY_COLUMNS = ("wave", "instrument", "relation", "scale", "n", "k", "alpha")

_ITEM_KEY = ["instrument_version_id", "item_id"]
_RESPONDENT = ["cohort", "wave", "instrument", "instrument_version_id", "relation"]
_RESPONDENT += ["person_id", "subject_id"]
_NO_RELATION = "-"


def score(answers: pd.DataFrame, items: pd.DataFrame) -> pd.DataFrame:
    """The answers with a `score` column: the value, or `scale_min + scale_max - value`
    for an item its instrument version marks `reverse`.

    Items are matched on `instrument_version_id` + `item_id`; an answer to an item the
    items frame does not list is scored as given. Raises ValueError for a reverse-scored
    item without a scale range, which could not be reversed.
    """
    rules = items.drop_duplicates(_ITEM_KEY).set_index(_ITEM_KEY)
    rules = rules.reindex(pd.MultiIndex.from_frame(answers[_ITEM_KEY]))
    value = pd.to_numeric(answers["value"]).astype(float).to_numpy()
    reverse = rules["reverse"].eq(True).to_numpy()
    low = pd.to_numeric(rules["scale_min"]).astype(float).to_numpy()
    high = pd.to_numeric(rules["scale_max"]).astype(float).to_numpy()
    unranged = reverse & (np.isnan(low) | np.isnan(high))
    if unranged.any():
        item = answers.loc[unranged, "item_id"].iloc[0]
        raise ValueError(f"item {item!r} is reverse-scored but has no scale_min/scale_max")
    return answers.assign(score=np.where(reverse, low + high - value, value))


def _membership(items: pd.DataFrame) -> pd.DataFrame:
    """One row per (instrument_version_id, item_id, scale), with the scale's item count."""
    pairs = items[[*_ITEM_KEY, "scales"]].explode("scales").dropna(subset=["scales"])
    pairs = pairs.rename(columns={"scales": "scale"}).drop_duplicates()
    sizes = pairs.groupby(["instrument_version_id", "scale"])["item_id"].transform("size")
    return pairs.assign(n_items=sizes)


def scale_scores(scored: pd.DataFrame, items: pd.DataFrame, min_share: float = 0.5) -> pd.DataFrame:
    """One row per (cohort, wave, instrument, relation, person_id, subject_id, scale) that
    the respondent answered at least one item of (columns `SCALE_SCORE_COLUMNS`).

    Rule: `score` is the mean of the respondent's item scores over the scale's items when
    `n_items_answered / n_items >= min_share`, otherwise NaN. `scored` is the output of
    `score` (so reverse-scored items are already reversed); relation and subject_id stay
    NaN where the answers have them NaN (non-360 instruments).
    """
    if not 0 < min_share <= 1:
        raise ValueError(f"min_share must be in (0, 1], not {min_share}")
    members = _membership(items)
    if scored.empty or members.empty:
        return pd.DataFrame(columns=list(SCALE_SCORE_COLUMNS))
    rows = scored.merge(members, on=_ITEM_KEY, how="inner")
    keys = [*_RESPONDENT, "scale", "n_items"]
    # A repeated answer to one item counts once (its mean), never as two items.
    per_item = rows.groupby([*keys, "item_id"], dropna=False)["score"].mean()
    table = per_item.groupby(level=keys, dropna=False).agg(["size", "mean"]).reset_index()
    table = table.rename(columns={"size": "n_items_answered", "mean": "score"})
    enough = table["n_items_answered"] >= table["n_items"] * min_share - 1e-9
    table["score"] = table["score"].where(enough)
    return table[list(SCALE_SCORE_COLUMNS)]


def cronbach_alpha(wide: pd.DataFrame) -> float:
    """Cronbach's alpha of a respondents x items table, over complete rows only.

    NaN when fewer than two items or two complete rows, or when the total score does not
    vary (alpha is undefined then).
    """
    complete = wide.dropna().astype(float)
    n, k = complete.shape
    if k < 2 or n < 2:
        return math.nan
    total_variance = complete.sum(axis=1).var(ddof=1)
    if total_variance == 0:
        return math.nan
    item_variances = complete.var(axis=0, ddof=1).sum()
    return float(k / (k - 1) * (1 - item_variances / total_variance))


def reliability(scored: pd.DataFrame, items: pd.DataFrame, threshold: int) -> pd.DataFrame:
    """Cronbach's alpha per wave, instrument, relation ("-" outside a 360) and scale
    (columns `RELIABILITY_COLUMNS`).

    `n` is the number of respondents who answered all `k` items of the scale. When
    0 < n < `threshold`, `n` and `alpha` are `SUPPRESSED`; alpha is NaN when k < 2.
    """
    members = _membership(items)
    if scored.empty or members.empty:
        return pd.DataFrame(columns=list(RELIABILITY_COLUMNS))
    data = scored.assign(relation=scored["relation"].fillna(_NO_RELATION))
    data = data.merge(members, on=_ITEM_KEY, how="inner")
    rows = []
    groups = data.groupby(["wave", "instrument", "relation", "scale"], sort=True)
    for (wave, instrument, relation, scale), group in groups:
        scale_items = members.loc[
            members["instrument_version_id"].isin(group["instrument_version_id"])
            & (members["scale"] == scale),
            "item_id",
        ].unique()
        rows.append([wave, instrument, relation, scale, *_alpha(group, scale_items, threshold)])
    return pd.DataFrame(rows, columns=list(RELIABILITY_COLUMNS))


def _alpha(group: pd.DataFrame, scale_items: np.ndarray, threshold: int) -> list[object]:
    """[n, k, alpha] for one scale's answers, suppressed when n is too small."""
    respondent = ["cohort", "person_id", "subject_id"]
    per_item = group.groupby([*respondent, "item_id"], dropna=False)["score"].mean()
    wide = per_item.unstack("item_id")
    # Items nobody answered still belong to the scale: reindexing keeps them as gaps, so
    # no respondent counts as complete without them.
    wide = wide.reindex(columns=scale_items)
    n, k = int(len(wide.dropna())), len(scale_items)
    if k < 2:
        return [SUPPRESSED if too_small(n, threshold) else n, k, math.nan]
    if too_small(n, threshold):
        return [SUPPRESSED, k, SUPPRESSED]
    return [n, k, cronbach_alpha(wide)]
