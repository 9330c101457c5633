"""Pre/post change, item by item and scale by scale, for matched and unmatched respondents.

Answers are first scored (`reports.scales.score`: reverse-scored items reversed) and
scale scores formed (`reports.scales.scale_scores`: mean of the scale's items when at
least half were answered). Each item and each scale is then a *measure*, compared between
the `pre` and `post` waves within one instrument and rater relation ("-" outside a 360).
A respondent is a person (for a 360, a person rating one subject manager); wave keys are
pooled across cohorts. Differences are always post minus pre.

Matched respondents (a value for the measure in both waves):
- paired t test (`scipy.stats.ttest_rel`), its 95% confidence interval for the mean
  difference, and d_z = mean difference / SD of the differences (Cohen's d for paired
  data; Lakens, 2013);
- Wilcoxon signed-rank p, computed as R's `wilcox.test(post, pre, paired = TRUE)` does:
  zero differences are dropped; the exact null distribution is used when fewer than 50
  non-zero differences remain and there were no zeros and no ties; otherwise the normal
  approximation with the tie-corrected variance and a continuity correction of 0.5.
  scipy's own defaults differ (`method="auto"` switches to a permutation test for n <= 13
  with ties or zeros, uses exact up to n = 50 inclusive, and `correction=False`), so the
  method is chosen here and passed explicitly with `zero_method="wilcox"`,
  `correction=True`. Differences are rounded to 9 decimals first so that floating-point
  noise in scale means cannot hide a tie or a zero.

Unmatched respondents (a value in one wave only): the partially overlapping samples t test
of Derrick, Russ, Toher & White (2017, JMASM 16(1)) and Derrick, Toher & White (2017, TQMP
13(2)), statistic T_new2 with its Welch-type degrees of freedom, as in their R package
`Partiallyoverlapping::Partover.test(var.equal = FALSE)`. It uses every respondent: all
post values against all pre values, with the covariance of the pairs subtracted:

    T = (mean_post - mean_pre) / sqrt(s1^2/n1 + s2^2/n2 - 2 r s1 s2 n_c / (n1 n2))
    df = (n_c - 1) + (gamma - n_c + 1) / (n_a + n_b + 2 n_c) * (n_a + n_b)

where n1, n2 are everyone in the post and the pre wave, n_a, n_b the pre-only and
post-only respondents, n_c the pairs, r the Pearson correlation of the pairs, and gamma
the Welch df. r is taken as 0 when either side of the pairs does not vary (as the package
does) and when there are fewer than 2 pairs (where the package stops with an error).
With no pairs it is Welch's t ("welch"); with no unpaired respondents it equals the
paired t. Hedges' g compares the two independent groups, post-only minus pre-only, over
their pooled SD (n - 1 weights), times the exact small-sample correction
J = Gamma(m/2) / (sqrt(m/2) Gamma((m-1)/2)), m = n_a + n_b - 2 (Hedges, 1981).

Multiplicity: `p_holm` is the paired-t p adjusted by Holm's method (as R's `p.adjust`
and statsmodels' `multipletests(method="holm")` compute it) across the items of one
instrument and relation; the scales of an instrument and relation are a family of their
own. Only p values that are shown enter a family.

Disclosure: when fewer than `threshold` people are matched, every matched figure (n_pairs
included) is `SUPPRESSED`. When the pre-only or post-only group holds 1 to threshold - 1
people, or a whole wave does, every unmatched figure is `SUPPRESSED` too, because a lone
unpaired answer could be worked back from the test. `note` says why, in plain words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import special, stats

from reports.disclosure import SUPPRESSED, too_small
from reports.scales import scale_scores, score

PREPOST_COLUMNS = (
    "instrument",
    "relation",
    "measure",
    "measure_id",
    "n_pairs",
    "mean_pre",
    "mean_post",
    "mean_diff",
    "ci95_low",
    "ci95_high",
    "t",
    "df",
    "p_t",
    "d_z",
    "wilcoxon_p",
    "p_holm",
    "n_pre_only",
    "n_post_only",
    "unmatched_test",
    "unmatched_stat",
    "unmatched_df",
    "unmatched_p",
    "hedges_g",
    "note",
)

METHOD_NOTE = (
    "Each item and each scale is compared between the two waves within an instrument and "
    "rater relation; reverse-scored items are reversed first, and a scale score is the mean "
    "of its items when at least half were answered. Matched people (answered both waves; "
    "for a 360, about the same manager): paired t test with its 95% confidence interval, "
    "d_z = mean difference / SD of the differences, and the Wilcoxon signed-rank p as R's "
    "wilcox.test computes it (exact below 50 non-zero differences without ties or zeros, "
    "otherwise the normal approximation with continuity correction). p_holm adjusts the "
    "paired-t p by Holm's method across the items of an instrument and relation, and "
    "separately across its scales. Everyone, matched or not: the partially overlapping "
    "samples t test of Derrick, Toher and White (2017), T_new2 with Welch-type df (Welch's "
    "t when nobody answered both waves); Hedges' g (exact small-sample correction) compares "
    "the people who answered only the post wave with those who answered only the pre wave. "
    "Differences are post minus pre. Figures resting on fewer people than the anonymity "
    "threshold are suppressed, and so are the unmatched figures when either wave's "
    "one-wave-only group, or a whole wave, is that small."
)
"""The method in one paragraph, for the notes of every report that shows this table."""

_MATCHED = PREPOST_COLUMNS[4:15]
_UNMATCHED = PREPOST_COLUMNS[16:23]
_MEASURE = ["instrument", "relation", "measure", "measure_id"]
_RESPONDENT = ["person_id", "subject_id"]
_NO_RELATION = "-"
_NO_SUBJECT = -1
_EXACT_LIMIT = 50  # R's wilcox.test: exact p only below 50 non-zero differences


def prepost(
    answers: pd.DataFrame, items: pd.DataFrame, pre: str, post: str, threshold: int
) -> pd.DataFrame:
    """Change from wave `pre` to wave `post` for every item and scale of every instrument
    and rater relation answered in those waves (columns `PREPOST_COLUMNS`).

    `answers` is `reports.frames.answers_frame`, `items` is `reports.frames.items_frame`,
    `threshold` the programme's anonymity threshold. Rows come in questionnaire order:
    items by position, then scales. Figures are unrounded floats, NaN where a statistic
    is undefined, or `SUPPRESSED`.
    """
    if pre == post:
        raise ValueError("pre and post must be different waves")
    values = _measure_values(answers, items, pre, post)
    rows = []
    for (instrument, relation), group in values.groupby(["instrument", "relation"]):
        measures = dict(tuple(group.groupby(["measure", "measure_id"], sort=False)))
        for measure, measure_id in _catalogue(group, items):
            one = measures.get((measure, measure_id), group.iloc[:0])
            before = one.loc[one["wave"] == pre].set_index(_RESPONDENT)["value"]
            after = one.loc[one["wave"] == post].set_index(_RESPONDENT)["value"]
            head = [instrument, relation, measure, measure_id]
            rows.append(dict(zip(_MEASURE, head, strict=True)))
            rows[-1].update(_compare(before, after, threshold, pre, post))
    return _with_holm(pd.DataFrame(rows, columns=list(PREPOST_COLUMNS)))


def _measure_values(
    answers: pd.DataFrame, items: pd.DataFrame, pre: str, post: str
) -> pd.DataFrame:
    """One value per measure, respondent and wave (`pre`/`post` only), long format."""
    columns = [*_MEASURE, *_RESPONDENT, "wave", "value"]
    asked = answers[answers["wave"].isin([pre, post])]
    if asked.empty:
        return pd.DataFrame(columns=[*columns, "instrument_version_id"])
    scored = score(asked, items)
    per_item = scored.assign(measure="item", measure_id=scored["item_id"], value=scored["score"])
    scales = scale_scores(scored, items).dropna(subset=["score"])
    per_scale = scales.assign(measure="scale", measure_id=scales["scale"], value=scales["score"])
    extra = ["instrument_version_id"]
    long = pd.concat([per_item[columns + extra], per_scale[columns + extra]], ignore_index=True)
    long["relation"] = long["relation"].fillna(_NO_RELATION)
    long["subject_id"] = long["subject_id"].fillna(_NO_SUBJECT)
    # Two answers from one respondent to one measure in one wave count once (their mean).
    keys = [*_MEASURE, *_RESPONDENT, "wave"]
    versions = long.groupby(keys, sort=False)["instrument_version_id"].first()
    values = long.groupby(keys, sort=False)["value"].mean()
    return pd.concat([values, versions], axis=1).reset_index()


def _catalogue(values: pd.DataFrame, items: pd.DataFrame) -> list[tuple[str, str]]:
    """Every (measure, measure_id) of the instrument versions answered: items in
    questionnaire order, then scales in order of their first item; answered items the
    items frame does not know come after the known ones."""
    known = items[items["instrument_version_id"].isin(values["instrument_version_id"])]
    known = known.sort_values(["position", "instrument_version_id"], kind="stable")
    item_ids = list(dict.fromkeys(known["item_id"]))
    answered = values.loc[values["measure"] == "item", "measure_id"]
    item_ids += sorted(set(answered) - set(item_ids))
    scales = list(dict.fromkeys(name for names in known["scales"] for name in names))
    return [("item", i) for i in item_ids] + [("scale", s) for s in scales]


def _compare(
    before: pd.Series, after: pd.Series, threshold: int, pre: str, post: str
) -> dict[str, object]:
    """All figures of one measure, suppressed as the disclosure rule requires."""
    paired = before.index.intersection(after.index)
    pre_pairs = before.loc[paired].to_numpy(float)
    post_pairs = after.loc[paired].to_numpy(float)
    # A mask, not Series.drop: drop on a MultiIndex took 2.9 s of a 1,000,000-answer report.
    pre_only = before[~before.index.isin(paired)].to_numpy(float)
    post_only = after[~after.index.isin(paired)].to_numpy(float)
    notes: list[str] = []
    matched = _matched(pre_pairs, post_pairs)
    if too_small(len(paired), threshold):
        matched = dict.fromkeys(_MATCHED, SUPPRESSED)
        notes.append(f"fewer than {threshold} people answered both waves")
    else:
        notes += _matched_notes(pre_pairs, post_pairs)
    unmatched = _unmatched(pre_only, post_only, pre_pairs, post_pairs)
    sizes = {pre: (len(pre_only), len(paired)), post: (len(post_only), len(paired))}
    withheld = _unmatched_withheld(sizes, threshold)
    if withheld:
        unmatched = dict.fromkeys(_UNMATCHED, SUPPRESSED)
        notes.append("; ".join(withheld) + ", so the unmatched comparison is withheld")
    return {**matched, **unmatched, "p_holm": math.nan, "note": "; ".join(notes)}


def _matched(pre: np.ndarray, post: np.ndarray) -> dict[str, object]:
    """Paired t, its 95% CI, d_z and the Wilcoxon signed-rank p for matched values."""
    n = len(pre)
    figures: dict[str, object] = dict.fromkeys(_MATCHED, math.nan)
    figures["n_pairs"] = n
    if n == 0:
        return figures
    diff = post - pre
    figures.update(mean_pre=pre.mean(), mean_post=post.mean(), mean_diff=diff.mean())
    if n < 2 or np.ptp(diff) == 0:  # no spread: t, its CI and d_z are undefined
        figures["wilcoxon_p"] = wilcoxon_p(diff)
        return figures
    test = stats.ttest_rel(post, pre)
    interval = test.confidence_interval(0.95)
    figures.update(
        ci95_low=float(interval.low),
        ci95_high=float(interval.high),
        t=float(test.statistic),
        df=float(test.df),
        p_t=float(test.pvalue),
        d_z=float(diff.mean() / diff.std(ddof=1)),
        wilcoxon_p=wilcoxon_p(diff),
    )
    return figures


def _matched_notes(pre: np.ndarray, post: np.ndarray) -> list[str]:
    """Plain-words reasons for matched figures left blank (NaN)."""
    if len(pre) == 0:
        return ["nobody answered both waves"]
    diff = post - pre
    if len(pre) == 1:
        return ["one person answered both waves: no test"]
    if np.ptp(diff) == 0:
        change = "nobody's answer changed" if diff[0] == 0 else "every answer changed equally"
        return [f"{change}: no t test or d_z"]
    return []


def wilcoxon_p(diff: Sequence[float] | np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of paired differences, as R's
    `wilcox.test(x, y, paired = TRUE)` gives it (see the module docstring); NaN when every
    difference is zero."""
    diff = np.round(np.asarray(diff, dtype=float), 9)
    nonzero = diff[diff != 0]
    if nonzero.size == 0:
        return math.nan
    ties = np.unique(np.abs(nonzero)).size < nonzero.size
    zeros = nonzero.size < diff.size
    exact = nonzero.size < _EXACT_LIMIT and not ties and not zeros
    result = stats.wilcoxon(
        nonzero,
        zero_method="wilcox",
        correction=True,
        method="exact" if exact else "asymptotic",
    )
    return float(result.pvalue)


def _unmatched(
    pre_only: np.ndarray, post_only: np.ndarray, pre_pairs: np.ndarray, post_pairs: np.ndarray
) -> dict[str, object]:
    """The partially overlapping (or Welch) t test over everyone, and Hedges' g."""
    test, stat, df, p = partially_overlapping_t(pre_only, post_only, pre_pairs, post_pairs)
    return {
        "n_pre_only": len(pre_only),
        "n_post_only": len(post_only),
        "unmatched_test": test,
        "unmatched_stat": stat,
        "unmatched_df": df,
        "unmatched_p": p,
        "hedges_g": hedges_g(pre_only, post_only),
    }


def _unmatched_withheld(sizes: dict[str, tuple[int, int]], threshold: int) -> list[str]:
    """Why the unmatched figures must be withheld, if they must: `sizes` maps each wave
    key to (people who answered only that wave, people who answered both)."""
    reasons = []
    for wave, (n_only, n_pairs) in sizes.items():
        if too_small(n_only, threshold):
            reasons.append(f"fewer than {threshold} people answered only the {wave} wave")
        elif too_small(n_only + n_pairs, threshold):
            reasons.append(f"fewer than {threshold} people answered the {wave} wave")
    return reasons


def partially_overlapping_t(
    pre_only: Sequence[float] | np.ndarray,
    post_only: Sequence[float] | np.ndarray,
    pre_pairs: Sequence[float] | np.ndarray,
    post_pairs: Sequence[float] | np.ndarray,
) -> tuple[str | None, float, float, float]:
    """(test name, T_new2, df, two-sided p) of Derrick et al. (2017), post minus pre.

    The name is "welch" when there are no pairs, "partially_overlapping" otherwise, None
    (with NaNs) when either wave has fewer than two values. The statistic is NaN when its
    standard error is zero (nobody's answer varies).
    """
    pre_pairs, post_pairs = np.asarray(pre_pairs, float), np.asarray(post_pairs, float)
    post_all = np.concatenate([np.asarray(post_only, float), post_pairs])
    pre_all = np.concatenate([np.asarray(pre_only, float), pre_pairs])
    n1, n2, n_c = len(post_all), len(pre_all), len(pre_pairs)
    if n1 < 2 or n2 < 2:
        return None, math.nan, math.nan, math.nan
    name = "partially_overlapping" if n_c else "welch"
    v1, v2 = post_all.var(ddof=1), pre_all.var(ddof=1)
    r = _pair_correlation(pre_pairs, post_pairs)
    se2 = v1 / n1 + v2 / n2 - 2 * r * math.sqrt(v1 * v2) * n_c / (n1 * n2)
    if se2 <= 0:
        return name, math.nan, math.nan, math.nan
    welch_df = (v1 / n1 + v2 / n2) ** 2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    n_unpaired = (n1 - n_c) + (n2 - n_c)
    df = (n_c - 1) + (welch_df - n_c + 1) / (n_unpaired + 2 * n_c) * n_unpaired
    stat = (post_all.mean() - pre_all.mean()) / math.sqrt(se2)
    return name, float(stat), float(df), float(2 * stats.t.sf(abs(stat), df))


def _pair_correlation(pre_pairs: np.ndarray, post_pairs: np.ndarray) -> float:
    """Pearson r of the pairs; 0 when it is undefined (under 2 pairs, or no variation)."""
    if len(pre_pairs) < 2 or np.ptp(pre_pairs) == 0 or np.ptp(post_pairs) == 0:
        return 0.0
    return float(np.corrcoef(pre_pairs, post_pairs)[0, 1])


def hedges_g(
    pre_only: Sequence[float] | np.ndarray, post_only: Sequence[float] | np.ndarray
) -> float:
    """Hedges' g of post-only minus pre-only respondents (independent groups): Cohen's d
    over the pooled SD, times the exact correction J (Hedges, 1981). NaN with fewer than
    two people in either group or no spread at all."""
    a, b = np.asarray(pre_only, float), np.asarray(post_only, float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    m = len(a) + len(b) - 2
    pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / m)
    if pooled == 0:
        return math.nan
    correction = math.exp(special.gammaln(m / 2) - special.gammaln((m - 1) / 2)) / math.sqrt(m / 2)
    return float(correction * (b.mean() - a.mean()) / pooled)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p values, in the order given (as R's `p.adjust(p, "holm")`)."""
    if len(p_values) == 0:
        return []
    # Holm's step-down, as statsmodels' multipletests(method="holm") computes it: p of rank
    # i (ascending) times (m - i), made monotone, capped at 1. Written out because
    # multipletests calls gc.collect() on every call, about 130 ms here, and a report runs
    # one family per instrument, relation and measure kind (tested against R's p.adjust).
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return [float(x) for x in adjusted]


def _with_holm(table: pd.DataFrame) -> pd.DataFrame:
    """Fill `p_holm`: each instrument x relation x measure kind is one family, holding the
    p values that are shown (suppressed or undefined ones are not tests we report)."""
    table = table.reset_index(drop=True)
    table["p_holm"] = table["p_holm"].astype(object)
    shown = table["p_t"].map(lambda p: isinstance(p, float) and not math.isnan(p)).astype(bool)
    table.loc[table["p_t"].eq(SUPPRESSED), "p_holm"] = SUPPRESSED
    for _, family in table[shown].groupby(["instrument", "relation", "measure"]):
        table.loc[family.index, "p_holm"] = holm(family["p_t"].tolist())
    return table
