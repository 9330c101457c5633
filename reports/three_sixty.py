"""360-degree appraisal: how a manager rates themself against how others rate them.

Input is `reports.frames.answers_frame` (rows of the `appraisal_360` instrument: `subject_id`
is the manager rated, `person_id` the rater, `relation` one of self, staff, line_manager,
peer) and `reports.frames.items_frame`.

Measures: each item, and each subscale of `items.scales`, scored by `reports.scales` as
pre/post change is: reverse-scored items turned round (`scale_min + scale_max - value`) so
that higher is always better, and a subscale figure is the mean of per-rater scale scores
(a rater's mean of the scale's items, counted only when they answered at least half of
them). Per-rater scores make every rater weigh the same and let `n_raters` count people;
a mean of item means would weigh raters by how many items they answered, and could be
solved for an item whose figure is suppressed.

Groups: "self", each relation, and "others": the relation groups that are shown, pooled
(one mean over their raters; suppressed itself when no relation group is shown). A
relation group with fewer raters on a measure than its `min_raters` is suppressed whole
(its count too) and is not folded into "others", so that "others" less the groups shown
cannot reveal it. `gap` is a group's mean less the self
mean (for "others": others - self); `change` is the difference from the same group's
mean in the previous wave (waves ordered by `wave_opens_at`); either is suppressed when a
figure it rests on is. The change of "others" compares whichever groups were shown in each
wave. Gaps and changes are simple differences of means, not tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import pandas as pd

from reports import scales
from reports.disclosure import SUPPRESSED, too_small

INSTRUMENT = "appraisal_360"
SELF = "self"
OTHERS = "others"
GROUPS = (SELF, "staff", "line_manager", "peer", OTHERS)
"""Row order of the groups; a relation not listed here sorts after "peer"."""
LEVELS = ("item", "scale")
UNCONFIGURED_MIN_RATERS = 5
"""The least minimum group for a rater relation missing from `min_raters` (the shipped
default for staff, and the default anonymity threshold)."""

SELF_VS_OTHERS_COLUMNS = (
    "subject_id",
    "cohort",
    "wave",
    "wave_kind",
    "wave_opens_at",
    "level",
    "measure",
    "group",
    "n_raters",
    "mean",
    "gap",
    "change",
)
POOLED_COLUMNS = (
    "cohort",
    "wave",
    "wave_kind",
    "wave_opens_at",
    "level",
    "measure",
    "group",
    "n_managers",
    "n_raters",
    "mean",
    "gap",
    "change",
)
MANAGER_ITEM_COLUMNS = (
    "wave",
    "wave_kind",
    "wave_opens_at",
    "measure",
    "text",
    "group",
    "n_raters",
    "mean",
    "gap",
    "change",
)
MANAGER_SCALE_COLUMNS = tuple(c for c in MANAGER_ITEM_COLUMNS if c != "text")
MANAGER_RATER_COLUMNS = ("wave", "wave_kind", "wave_opens_at", "group", "n_raters")

_WAVE = ["cohort", "wave", "wave_kind", "wave_opens_at"]
_MANAGER_CELL = ["subject_id", *_WAVE, "level", "measure"]
_POOLED_CELL = [*_WAVE, "level", "measure"]


def self_vs_others(
    answers: pd.DataFrame,
    items: pd.DataFrame,
    min_raters: Mapping[str, int],
    waves: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Per manager, wave, measure (item or subscale) and group: raters, mean, gap, change.

    Columns: `SELF_VS_OTHERS_COLUMNS`. `waves` keeps only those wave keys (change is then
    between consecutive kept waves). Figures of a suppressed group are `SUPPRESSED`;
    `gap` is NaN on "self" rows, `change` NaN in a group's first wave.
    """
    scores = _rater_scores(answers, items, waves)
    table = _summarise(scores, _MANAGER_CELL, _manager_rule(min_raters))
    table = _with_change(_with_gap(table, _MANAGER_CELL), "subject_id", _MANAGER_CELL)
    return _published(table, SELF_VS_OTHERS_COLUMNS, ["subject_id", "cohort"], items)


def pooled_self_vs_others(
    answers: pd.DataFrame,
    items: pd.DataFrame,
    min_raters: Mapping[str, int],
    threshold: int,
    waves: Iterable[str] | None = None,
) -> pd.DataFrame:
    """`self_vs_others` over all the managers of each cohort, pooled.

    Each manager's relation groups below `min_raters` are dropped first. Then every group
    needs `threshold` managers, and each relation group (a mean over its ratings, every
    rater of every manager weighing the same) also `threshold` distinct raters; "others"
    pools the relation groups shown. Columns: `POOLED_COLUMNS`.
    """
    scores = _rater_scores(answers, items, waves)
    per_manager = _summarise(scores, _MANAGER_CELL, _manager_rule(min_raters))
    kept = per_manager.loc[per_manager["shown"] & (per_manager["group"] != OTHERS)]
    scores = scores.merge(
        kept[[*_MANAGER_CELL, "group"]].rename(columns={"group": "relation"}),
        on=[*_MANAGER_CELL, "relation"],
    )
    table = _summarise(scores, _POOLED_CELL, _pooled_rule(threshold))
    table = _with_change(_with_gap(table, _POOLED_CELL), "cohort", _POOLED_CELL)
    return _published(table, POOLED_COLUMNS, ["cohort"], items)


def manager_report(
    answers: pd.DataFrame,
    items: pd.DataFrame,
    min_raters: Mapping[str, int],
    subject_id: int,
) -> dict[str, pd.DataFrame]:
    """One manager's confidential 360 report, every wave: "items" (`MANAGER_ITEM_COLUMNS`,
    with the item's wording as others were asked it), "scales" (`MANAGER_SCALE_COLUMNS`)
    and "raters" (`MANAGER_RATER_COLUMNS`: raters who answered anything, per wave and
    group, under the same suppression). Pure: who may see it is the web layer's business.
    """
    mine = answers.loc[answers["subject_id"] == subject_id]
    table = self_vs_others(mine, items, min_raters)
    texts = (
        items.loc[items["instrument"] == INSTRUMENT]
        .sort_values("instrument_version_id")
        .drop_duplicates("item_id", keep="last")
        .set_index("item_id")["text"]
    )
    by_item = table.loc[table["level"] == "item"].assign(text=lambda t: t["measure"].map(texts))
    by_scale = table.loc[table["level"] == "scale"]
    return {
        "items": by_item[list(MANAGER_ITEM_COLUMNS)].reset_index(drop=True),
        "scales": by_scale[list(MANAGER_SCALE_COLUMNS)].reset_index(drop=True),
        "raters": _raters(mine, min_raters),
    }


def _rater_scores(
    answers: pd.DataFrame, items: pd.DataFrame, waves: Iterable[str] | None
) -> pd.DataFrame:
    """One row per rater, manager, wave and measure: the rater's `score` on it (item
    scores and scale scores as `reports.scales` forms them)."""
    # An appraisal asked without a subject (a programme file may ask it of roles only)
    # rates nobody in particular: it has no place in a self-vs-others comparison.
    data = answers.loc[(answers["instrument"] == INSTRUMENT) & answers["subject_id"].notna()]
    if waves is not None:
        data = data.loc[data["wave"].isin(list(waves))]
    data = data.astype({"subject_id": "int64", "person_id": "int64"})
    keys = ["subject_id", *_WAVE, "relation", "person_id"]
    columns = [*keys, "level", "measure", "score"]
    if data.empty:
        return pd.DataFrame(columns=columns)
    scored = scales.score(data, items)
    by_item = scored.rename(columns={"item_id": "measure"}).assign(level="item")
    by_scale = scales.scale_scores(scored, items).dropna(subset=["score"])
    # scale_scores keys waves by cohort and key only: bring back their kind and opening.
    wave_info = data[_WAVE].drop_duplicates()
    by_scale = by_scale.merge(wave_info, on=["cohort", "wave"]).assign(level="scale")
    by_scale = by_scale.rename(columns={"scale": "measure"})
    by_scale = by_scale.astype({"subject_id": "int64", "person_id": "int64"})
    return pd.concat([by_item[columns], by_scale[columns]], ignore_index=True)


ShownRule = Callable[[pd.DataFrame], pd.Series]


def _minimum(min_raters: Mapping[str, int], relation: str) -> int:
    """A relation's minimum group. A relation with no minimum configured gets the
    strictest one configured, and never less than `UNCONFIGURED_MIN_RATERS`: a missing
    setting must hide more, not less."""
    if relation in min_raters:
        return int(min_raters[relation])
    if relation == SELF:
        return 1
    return max([UNCONFIGURED_MIN_RATERS, *(int(v) for v in min_raters.values())])


def _manager_rule(min_raters: Mapping[str, int]) -> ShownRule:
    """One manager's group is shown when it has at least its relation's minimum raters."""

    def shown(groups: pd.DataFrame) -> pd.Series:
        return pd.Series(
            [
                not too_small(n, _minimum(min_raters, g))
                for n, g in zip(groups["n_raters"], groups["group"], strict=True)
            ],
            index=groups.index,
            dtype=bool,
        )

    return shown


def _pooled_rule(threshold: int) -> ShownRule:
    """Every pooled group needs `threshold` managers, and a pooled relation also needs
    `threshold` raters. The managers are the people a 360 is about: a pool of fewer would
    show an evaluator what is, in effect, one manager's confidential report."""

    def shown(groups: pd.DataFrame) -> pd.Series:
        managers_ok = ~groups["n_managers"].map(lambda k: too_small(int(k), threshold))
        raters_ok = ~groups["n_raters"].map(lambda k: too_small(int(k), threshold))
        return (managers_ok & (raters_ok | (groups["group"] == SELF))).astype(bool)

    return shown


def _summarise(scores: pd.DataFrame, cell: list[str], rule: ShownRule) -> pd.DataFrame:
    """Per cell and group: n_managers, n_raters, mean and whether it is `shown`; with an
    "others" row pooling the shown relation groups of every cell that has raters."""
    columns = [*cell, "group", "n_managers", "n_raters", "mean", "shown"]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    groups = _counted(scores, [*cell, "relation"]).rename(columns={"relation": "group"})
    groups["shown"] = rule(groups)
    shown = groups.loc[groups["shown"] & (groups["group"] != SELF), [*cell, "group"]]
    pooled = scores.merge(shown.rename(columns={"group": "relation"}), on=[*cell, "relation"])
    others = _counted(pooled, cell)
    # A cell whose raters were all suppressed still gets an "others" row, suppressed: "0
    # raters" would tell a manager that nobody rated them, when some did, too few to show.
    rated = groups.loc[groups["group"] != SELF, cell].drop_duplicates()
    others = rated.merge(others, on=cell, how="left")
    others = others.fillna({"n_managers": 0, "n_raters": 0})
    others = others.astype({"n_managers": "int64", "n_raters": "int64"})
    others = others.assign(group=OTHERS, shown=others["n_raters"] > 0)
    table = pd.concat([groups, others], ignore_index=True)[columns]
    return table.astype({"shown": bool})


def _counted(scores: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Distinct managers and raters, and the mean score, per group of `keys`."""
    return (
        scores.groupby(keys, dropna=False)
        .agg(
            n_managers=("subject_id", "nunique"),
            n_raters=("person_id", "nunique"),
            mean=("score", "mean"),
        )
        .reset_index()
    )


def _with_gap(table: pd.DataFrame, cell: list[str]) -> pd.DataFrame:
    """`gap` = group mean - self mean in the same cell; `gap_hidden` when either side is
    suppressed. NaN on self rows and where there is no self rating."""
    own = table.loc[table["group"] == SELF, [*cell, "mean", "shown"]]
    own = own.rename(columns={"mean": "self_mean", "shown": "self_shown"})
    table = table.merge(own, on=cell, how="left")
    is_self = table["group"] == SELF
    table["gap"] = (table["mean"] - table["self_mean"]).where(~is_self)
    has_self = table["self_shown"].notna()
    hidden = ~table["shown"] | (has_self & ~table["self_shown"].fillna(True).astype(bool))
    table["gap_hidden"] = hidden & ~is_self
    return table.drop(columns=["self_mean", "self_shown"])


def _with_change(table: pd.DataFrame, unit: str, cell: list[str]) -> pd.DataFrame:
    """`change` = mean - the same group's mean in the unit's previous wave (waves of a
    manager, or of a cohort, ordered by opening time); `change_hidden` when either side
    is suppressed (a suppressed group's change is hidden even in its first wave, so
    every figure of it reads the same)."""
    waves = table[[unit, "wave_opens_at", "wave"]].drop_duplicates()
    waves = waves.sort_values([unit, "wave_opens_at", "wave"])
    waves["rank"] = waves.groupby(unit).cumcount()
    table = table.merge(waves, on=[unit, "wave_opens_at", "wave"])
    series = [unit, *[c for c in cell if c not in (unit, *_WAVE)], "group"]
    before = table[[*series, "rank", "mean", "shown"]].assign(rank=lambda t: t["rank"] + 1)
    before = before.rename(columns={"mean": "mean_before", "shown": "shown_before"})
    table = table.merge(before, on=[*series, "rank"], how="left")
    table["change"] = table["mean"] - table["mean_before"]
    had = table["shown_before"].notna()
    table["change_hidden"] = ~table["shown"] | (
        had & ~table["shown_before"].fillna(True).astype(bool)
    )
    return table.drop(columns=["mean_before", "shown_before"])


def _published(
    table: pd.DataFrame, columns: tuple[str, ...], unit: list[str], items: pd.DataFrame
) -> pd.DataFrame:
    """Rows in report order (by `unit`, wave, level, measure, group), with `SUPPRESSED`
    in place of every hidden figure."""
    if table.empty:
        return pd.DataFrame(columns=list(columns))
    table = table.assign(
        _level=table["level"].map(LEVELS.index),
        _measure=table["measure"].map(_measure_order(items)).fillna(math.inf),
        _group=table["group"].map(_group_rank),
    )
    order = [*unit, "wave_opens_at", "wave", "_level", "_measure", "measure", "_group"]
    table = table.sort_values(order).reset_index(drop=True)
    out = table[list(columns)].astype(object)
    figures = [c for c in ("n_managers", "n_raters", "mean") if c in columns]
    out.loc[~table["shown"], figures] = SUPPRESSED
    out.loc[table["gap_hidden"], "gap"] = SUPPRESSED
    out.loc[table["change_hidden"], "change"] = SUPPRESSED
    return out


def _group_rank(group: str) -> float:
    """Where a group's row goes: `GROUPS` order, an unlisted relation just before others."""
    return GROUPS.index(group) if group in GROUPS else GROUPS.index(OTHERS) - 0.5


def _measure_order(items: pd.DataFrame) -> dict[str, int]:
    """Items in questionnaire order, then subscales in the order their items come."""
    rows = items.loc[items["instrument"] == INSTRUMENT].sort_values("position")
    order: dict[str, int] = {}
    for item_id in rows["item_id"]:
        order.setdefault(item_id, len(order))
    for names in rows["scales"]:
        for name in names:
            order.setdefault(name, len(order))
    return order


def _raters(answers: pd.DataFrame, min_raters: Mapping[str, int]) -> pd.DataFrame:
    """Raters who answered anything, per wave and group, suppressed as the figures are."""
    data = answers.loc[(answers["instrument"] == INSTRUMENT) & answers["subject_id"].notna()]
    if data.empty:
        return pd.DataFrame(columns=list(MANAGER_RATER_COLUMNS))
    scores = data.assign(level="any", measure="any", score=0.0)
    scores = scores.astype({"subject_id": "int64", "person_id": "int64"})
    table = _summarise(scores, _MANAGER_CELL, _manager_rule(min_raters))
    table = table.assign(_group=table["group"].map(_group_rank))
    table = table.sort_values(["wave_opens_at", "wave", "_group"])
    out = table[list(MANAGER_RATER_COLUMNS)].astype(object).reset_index(drop=True)
    out.loc[~table["shown"].to_numpy(), "n_raters"] = SUPPRESSED
    return out
