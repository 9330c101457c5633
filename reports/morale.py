"""Staff morale (the `staff_morale` instrument's one item, `morale`, 1 Very low to 5 Very
high): by home or cohort and wave, and as a time series of pulse waves on an XmR chart.

A person counts once per group: their answers in a group are averaged first, then the
group's mean and SD (sample SD, n - 1) are taken over people, so `n_respondents` is a
count of people. A group of fewer people than the anonymity threshold is suppressed,
together with as many of its neighbours (the other homes of the same wave) as it takes so
that it cannot be worked out from a total published elsewhere (`reports.disclosure.protect`).
Differences between waves are simple differences of means; pre/post statistics are
`reports.prepost`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from reports.disclosure import SUPPRESSED, protect, too_small
from reports.xmr import xmr

INSTRUMENT = "staff_morale"
ITEM = "morale"
PULSE = "pulse"

MORALE_FIGURES = ("n_respondents", "mean", "sd")
"""The figure columns of `morale_by_group`, after one column per `by` name."""
PULSE_FIGURES = (
    "wave",
    "wave_opens_at",
    "label",
    "n_respondents",
    "mean",
    "centre",
    "unpl",
    "lnpl",
    "upper_near",
    "lower_near",
    "trial_limits",
    "signals",
)
"""The columns of `pulse_series`, after its `by` column."""


def morale_by_group(
    answers: pd.DataFrame, by: Sequence[str] = ("home", "wave"), threshold: int | None = None
) -> pd.DataFrame:
    """Mean morale per group of `by` (e.g. ("home", "wave") or ("cohort", "wave")):
    n_respondents (distinct people), mean and SD. Waves come in the order they opened.
    Columns: *by, then `MORALE_FIGURES`.

    Every figure of a group of fewer than `threshold` people is `SUPPRESSED`, and so are
    enough other groups with the same values of the later `by` columns (the other homes of
    a wave) that the total of those groups, shown elsewhere (by cohort), less the groups
    shown, reveals no small group.

    `threshold` is required (it defaults to None only so that `by` can keep its default
    before it): there is no safe default anonymity threshold to fall back on.
    """
    if threshold is None:
        raise TypeError("morale_by_group needs the programme's anonymity threshold")
    keys = [by] if isinstance(by, str) else list(by)
    people = _person_scores(answers, keys)
    columns = [*keys, *MORALE_FIGURES]
    if people.empty:
        return pd.DataFrame(columns=columns)
    table = (
        people.groupby(keys)
        .agg(
            n_respondents=("score", "size"),
            mean=("score", "mean"),
            sd=("score", "std"),
            _opens=("wave_opens_at", "min"),
        )
        .reset_index()
    )
    # Waves sort by when they opened, not by the alphabet of their keys.
    order = [("_opens" if k == "wave" else k) for k in keys]
    table = table.sort_values([*order, *keys]).reset_index(drop=True)
    return protect(table[columns], "n_respondents", MORALE_FIGURES, keys[1:], threshold)


def pulse_series(
    answers: pd.DataFrame,
    threshold: int,
    by: str = "cohort",
    invitations: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Mean morale per pulse wave (waves of kind "pulse"), one series per value of `by`
    in the order the waves opened, with the series' XmR centre line, limits and signals
    (see `reports.xmr`).

    A point from fewer than `threshold` people stays in the series as a gap: its
    n_respondents and mean are `SUPPRESSED` and it is left out of the limits. `label` is
    the date the wave opened ("1 March 2027"); `signals` names the rules that flag the
    point, comma-separated ("" if none). Columns: `by`, then `PULSE_FIGURES`.

    With `invitations` (`reports.frames.invitations_frame`), a pulse wave that asked
    morale but got no answer is a point too, with 0 respondents and no mean: a gap in the
    chart, not a month that silently never happened.
    """
    pulses = answers.loc[answers["wave_kind"] == PULSE]
    people = _person_scores(pulses, [by, "wave"])
    columns = [by, *PULSE_FIGURES]
    points = (
        people.groupby([by, "wave"])
        .agg(
            wave_opens_at=("wave_opens_at", "min"),
            n_respondents=("score", "size"),
            mean=("score", "mean"),
        )
        .reset_index()
    )
    if invitations is not None:
        points = _with_unanswered_waves(points, invitations, by)
    if points.empty:
        return pd.DataFrame(columns=columns)
    points = points.sort_values([by, "wave_opens_at", "wave"])
    series = [_charted(group, threshold) for _, group in points.groupby(by, sort=True)]
    return pd.concat(series, ignore_index=True)[columns]


def _with_unanswered_waves(
    points: pd.DataFrame, invitations: pd.DataFrame, by: str
) -> pd.DataFrame:
    """`points` plus a 0-respondent point for each pulse wave that asked morale of
    someone in `by`'s group and has no answer there."""
    asked = invitations.loc[
        (invitations["wave_kind"] == PULSE) & (invitations["instrument"] == INSTRUMENT),
        [by, "wave", "wave_opens_at"],
    ]
    asked = asked.astype({by: "str", "wave": "str"}).drop_duplicates([by, "wave"])
    answered = points.astype({by: "str", "wave": "str"})
    missing = asked.merge(answered[[by, "wave"]], on=[by, "wave"], how="left", indicator=True)
    missing = missing.loc[missing["_merge"] == "left_only", [by, "wave", "wave_opens_at"]]
    if missing.empty:
        return points
    missing = missing.assign(n_respondents=0, mean=float("nan"))
    return pd.concat([answered, missing], ignore_index=True)


def _person_scores(answers: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Each person's mean morale answer within each group of `keys` (as `score`)."""
    data = answers.loc[(answers["instrument"] == INSTRUMENT) & (answers["item_id"] == ITEM)]
    data = data.astype({"value": "float64"})
    return (
        data.groupby([*keys, "person_id"], dropna=False)
        .agg(score=("value", "mean"), wave_opens_at=("wave_opens_at", "min"))
        .reset_index()
    )


def _charted(points: pd.DataFrame, threshold: int) -> pd.DataFrame:
    """One series' points with its XmR limits; small points become gaps."""
    small = points["n_respondents"].map(lambda n: too_small(int(n), threshold)).astype(bool)
    labels = [_label(opens) for opens in points["wave_opens_at"]]
    chart = xmr(points["mean"].where(~small).tolist(), labels)
    out = points.astype(object).assign(
        label=labels,
        centre=chart.mean,
        unpl=chart.unpl,
        lnpl=chart.lnpl,
        upper_near=chart.upper_near,
        lower_near=chart.lower_near,
        trial_limits=chart.trial_limits,
        signals=[", ".join(chart.rules_at(i)) for i in range(len(points))],
    )
    out.loc[small.to_numpy(), ["n_respondents", "mean"]] = SUPPRESSED
    return out


def _label(opens: object) -> str:
    """The day a wave opened, as people write it: "1 March 2027"."""
    when = pd.Timestamp(opens)
    return f"{when.day} {when:%B %Y}"
