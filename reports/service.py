"""The reporting layer: one call builds every evaluator table of a programme.

`carepulse report` (CSV, XLSX, PNG), the evaluator dashboard and the JSON API all call
`build_report` and render its tables as they are, so the three can never disagree: the
numbers are computed, disclosure-controlled and rounded here, once.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from reports import dispositions, morale, prepost, scales, three_sixty, xmr
from reports.disclosure import SUPPRESSED, restrict_to
from reports.frames import (
    anonymity_threshold,
    answers_frame,
    invitations_frame,
    items_frame,
    min_raters,
)
from reports.response_rates import response_rates
from storage.models import Cohort, Programme, Wave

DECIMALS = 3
"""Every figure in every output is rounded to this many decimal places, here and only here."""

FILTERS = ("cohort", "home", "role", "channel")
"""Columns a report may be narrowed by. Each filter is checked by `subset_allowed`."""

RESPONSE_RATE_VIEWS: dict[str, list[str]] = {
    "response_rates": ["wave", "instrument"],
    "response_rates_by_home": ["wave", "instrument", "home"],
    "response_rates_by_role": ["wave", "instrument", "role"],
    "response_rates_by_channel": ["wave", "instrument", "channel"],
    "response_rates_detail": ["wave", "instrument", "home", "role", "channel"],
}

TABLE_TITLES: dict[str, str] = {
    "response_rates": "Response rates by wave and instrument (AAPOR RR1, RR2, COOP1, CON1)",
    "response_rates_by_home": "Response rates by wave, instrument and care home",
    "response_rates_by_role": "Response rates by wave, instrument and role",
    "response_rates_by_channel": "Response rates by wave, instrument and channel",
    "response_rates_detail": "Response rates by wave, instrument, home, role and channel",
    "prepost": "Pre/post change, items and scales",
    "reliability": "Scale reliability (Cronbach's alpha)",
    "three_sixty": "360 appraisal: self vs others, all managers pooled",
    "morale_by_home": "Staff morale by care home and wave",
    "morale_by_cohort": "Staff morale by cohort and wave",
    "pulse": "Staff morale over time (pulse waves), XmR",
}


@dataclass(frozen=True)
class ReportRequest:
    """What to report: a programme, the two waves to compare, and optional filters."""

    programme: str
    pre: str | None = None
    post: str | None = None
    filters: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_query(cls, programme: str, args: Mapping[str, str]) -> ReportRequest:
        """From a URL's query (`pre`, `post` and the `FILTERS`); empty values are ignored.

        Raises ReportError naming any other parameter, so a typo is not silently ignored.
        """
        unknown = set(args) - {"pre", "post", *FILTERS}
        if unknown:
            raise ReportError(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        return cls(
            programme=programme,
            pre=args.get("pre") or None,
            post=args.get("post") or None,
            filters={f: args[f] for f in FILTERS if args.get(f)},
        )


@dataclass
class Report:
    """Every table of one programme's report, ready to render: disclosure-controlled and
    rounded. `tables` keeps the order of `TABLE_TITLES`."""

    programme: str
    programme_name: str
    threshold: int
    pre: str | None
    post: str | None
    filters: dict[str, str]
    generated_at: dt.datetime
    tables: dict[str, pd.DataFrame]
    pulse_reading: str
    notes: dict[str, str]


class ReportError(ValueError):
    """A report cannot be made as asked (unknown programme or wave, refused filter)."""


def programme_waves(session: Session, programme_key: str) -> list[tuple[str, str, str]]:
    """(wave key, kind, name) of the programme's waves, in the order they open."""
    rows = session.execute(
        select(Wave.key, Wave.kind, Wave.name, Wave.opens_at)
        .join(Cohort, Wave.cohort_id == Cohort.id)
        .join(Programme, Cohort.programme_id == Programme.id)
        .where(Programme.key == programme_key)
        .order_by(Wave.opens_at, Wave.key)
    ).all()
    seen: dict[str, tuple[str, str, str]] = {}
    for key, kind, name, _ in rows:
        seen.setdefault(key, (key, kind, name))
    return list(seen.values())


def default_waves(waves: list[tuple[str, str, str]]) -> tuple[str | None, str | None]:
    """The waves compared when none are named: the first baseline and the last end wave
    (or, failing those, the first and last non-pulse waves)."""
    fixed = [w for w in waves if w[1] != "pulse"]
    pre = next((w[0] for w in fixed if w[1] == "baseline"), fixed[0][0] if fixed else None)
    ends = [w[0] for w in fixed if w[1] == "end"]
    post = ends[-1] if ends else (fixed[-1][0] if len(fixed) > 1 else None)
    return pre, post


def build_report(session: Session, request: ReportRequest) -> Report:
    """Build every table of the programme's report (see `TABLE_TITLES`).

    Raises ReportError for an unknown programme or wave, and for a filter that would
    describe, directly or by difference with the unfiltered report, fewer people than the
    programme's anonymity threshold.
    """
    found = session.execute(
        select(Programme.name, Programme.timezone).where(Programme.key == request.programme)
    ).first()
    if found is None:
        raise ReportError(f"there is no programme {request.programme!r}")
    name, timezone = found
    threshold = anonymity_threshold(session, request.programme)
    waves = programme_waves(session, request.programme)
    pre, post = _chosen_waves(waves, request)
    invitations = invitations_frame(session, request.programme)
    answers = answers_frame(session, request.programme)
    items = items_frame(session, request.programme)
    filters = _checked_filters(invitations, answers, request.filters, threshold)
    invitations, answers = _narrowed(invitations, filters), _narrowed(answers, filters)
    # Who had left before a wave opened is decided on the programme's local dates.
    invitations = dispositions.dispositions(invitations, timezone=timezone)

    tables: dict[str, pd.DataFrame] = {}
    for table_name, by in RESPONSE_RATE_VIEWS.items():
        # "response_rates" (wave x instrument) has no "All" row: instruments are not summed.
        tables[table_name] = response_rates(invitations, by, threshold)
    scored = scales.score(answers, items)
    if pre and post:
        tables["prepost"] = prepost.prepost(answers, items, pre, post, threshold)
    else:
        tables["prepost"] = pd.DataFrame(columns=list(prepost.PREPOST_COLUMNS))
    tables["reliability"] = scales.reliability(scored, items, threshold)
    tables["three_sixty"] = three_sixty.pooled_self_vs_others(
        answers, items, min_raters(session, request.programme), threshold
    )
    for table_name, by in (("morale_by_home", "home"), ("morale_by_cohort", "cohort")):
        tables[table_name] = morale.morale_by_group(answers, (by, "wave"), threshold)
    pulse = morale.pulse_series(answers, threshold, invitations=invitations)
    tables["pulse"] = pulse
    return Report(
        programme=request.programme,
        programme_name=name,
        threshold=threshold,
        pre=pre,
        post=post,
        filters=filters,
        generated_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        tables={k: rounded(tables[k]) for k in TABLE_TITLES if k in tables},
        pulse_reading=pulse_reading(pulse),
        notes=_notes(threshold, pre, post, filters),
    )


def _chosen_waves(
    waves: list[tuple[str, str, str]], request: ReportRequest
) -> tuple[str | None, str | None]:
    keys = [w[0] for w in waves]
    for given in (request.pre, request.post):
        if given is not None and given not in keys:
            raise ReportError(
                f"there is no wave {given!r} in programme {request.programme!r}; "
                f"its waves are: {', '.join(keys) or 'none'}"
            )
    default_pre, default_post = default_waves(waves)
    pre, post = request.pre or default_pre, request.post or default_post
    if pre is not None and pre == post:
        raise ReportError(f"pre and post are both {pre!r}: compare two different waves")
    return pre, post


def _checked_filters(
    invitations: pd.DataFrame,
    answers: pd.DataFrame,
    filters: Mapping[str, str],
    threshold: int,
) -> dict[str, str]:
    """The filters, if each is known and the subset it leaves is safe to report."""
    checked: dict[str, str] = {}
    for column, value in filters.items():
        if value in (None, ""):
            continue
        if column not in FILTERS:
            raise ReportError(f"cannot filter by {column!r}; use one of {', '.join(FILTERS)}")
        checked[column] = str(value)
    if not checked:
        return checked
    for column, value in checked.items():
        known = sorted({str(v) for v in invitations[column].dropna()})
        if value not in known:
            # A typo would otherwise give a silently empty report.
            raise ReportError(
                f"there is no {column} {value!r} in this programme; "
                f"known: {', '.join(known) or 'none'}"
            )
    # Invited people and respondents are both checked: either count, filtered or left out,
    # could describe a small group. restrict_to raises DisclosureError for a refused filter.
    for frame in (invitations, answers):
        restrict_to(frame, _mask(frame, checked), threshold, _describe(checked))
    return checked


def _mask(frame: pd.DataFrame, filters: Mapping[str, str]) -> pd.Series:
    keep = pd.Series(True, index=frame.index)
    for column, value in filters.items():
        keep &= frame[column].astype(str) == value
    return keep


def _narrowed(frame: pd.DataFrame, filters: Mapping[str, str]) -> pd.DataFrame:
    return frame.loc[_mask(frame, filters)]


def _describe(filters: Mapping[str, str]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in filters.items())


def pulse_reading(pulse: pd.DataFrame) -> str:
    """A plain-language reading of each cohort's pulse XmR chart."""
    if pulse.empty:
        return "There are no pulse waves with reportable morale yet."
    readings = []
    for cohort, rows in pulse.groupby("cohort", sort=True):
        values = [None if v == SUPPRESSED else float(v) for v in rows["mean"]]
        result = xmr.xmr(values, labels=[str(x) for x in rows["label"]])
        readings.append(f"{cohort}: {xmr.reading(result, what='morale')}")
    return " ".join(readings)


def rounded(table: pd.DataFrame) -> pd.DataFrame:
    """The table with every float rounded to `DECIMALS` (the suppression marker kept)."""

    def one(value: Any) -> Any:
        if isinstance(value, float) and math.isfinite(value):
            return round(value, DECIMALS)
        return value

    out = table.copy()
    for column in out.columns:
        if isinstance(out[column].dtype, pd.CategoricalDtype):
            # Categoricals are the frames' way to group fast; tables show plain text.
            out[column] = out[column].astype(out[column].cat.categories.dtype)
        if out[column].dtype.kind == "f":
            out[column] = out[column].round(DECIMALS)
        elif out[column].dtype == object:
            out[column] = out[column].map(one)
    return out


def _notes(threshold: int, pre: str | None, post: str | None, filters: dict[str, str]) -> dict:
    return {
        "Disclosure control": (
            f"Any figure from fewer than {threshold} people is shown as '{SUPPRESSED}', "
            "together with enough other figures that it cannot be worked out from totals. "
            "Filters that would describe a smaller group, directly or by difference, are "
            "refused."
        ),
        "Waves compared": f"pre = {pre or '(none)'}, post = {post or '(none)'}",
        "Filters": _describe(filters) or "none: the whole programme",
        "Response rates": dispositions.METHOD_NOTE,
        "Pre/post change": prepost.METHOD_NOTE,
        "Rounding": f"Figures are rounded to {DECIMALS} decimal places.",
    }
