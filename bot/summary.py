"""The plain-text programme summary printed by `carepulse report` and `carepulse demo`."""

from __future__ import annotations

import click
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from reports.frames import anonymity_threshold, answers_frame, invitations_frame
from reports.prepost import prepost
from reports.response_rates import SUPPRESSED, response_rates
from storage.models import Programme


def resolve_programme(session: Session, key: str | None) -> str:
    """The programme key to report on: the one given, or the only one there is."""
    keys = session.scalars(select(Programme.key).order_by(Programme.key)).all()
    if key is None:
        if len(keys) != 1:
            listed = ", ".join(keys) or "none loaded"
            raise click.ClickException(f"name a programme with --programme ({listed})")
        return keys[0]
    if key not in keys:
        raise click.ClickException(f"no programme {key!r}; known: {', '.join(keys) or 'none'}")
    return key


def programme_summary(
    session: Session, key: str, pre: str, post: str
) -> tuple[str, dict[str, pd.DataFrame]]:
    """Response rates and pre/post change as printable text and as tables."""
    threshold = anonymity_threshold(session, key)
    invitations = invitations_frame(session, key)
    by_wave = response_rates(invitations, ["wave", "instrument"], threshold)
    by_home = response_rates(invitations, ["wave", "home"], threshold)
    change = prepost(answers_frame(session, key), pre, post, threshold)
    tables = {"response_rates": by_wave, "response_rates_by_home": by_home, "prepost": change}
    parts = [
        f"Programme {key} (groups under {threshold} people are suppressed)",
        "",
        "Response rates by wave and instrument",
        _table(by_wave),
        "",
        "Response rates by wave and care home",
        _table(by_home),
        "",
        f"Change from {pre} to {post} (matched respondents; 95% CI, paired t; d_z)",
        *_prepost_lines(change, threshold),
    ]
    return "\n".join(parts), tables


def _prepost_lines(change: pd.DataFrame, threshold: int) -> list[str]:
    """The reported rows, then one line per group whose items are all suppressed."""
    hidden = change["n_pairs"] == SUPPRESSED
    lines = [_table(change[~hidden])]
    groups = change[hidden].groupby(["instrument", "relation"], sort=True).size()
    for (instrument, relation), items in groups.items():
        who = "" if relation == "-" else f" ({relation} ratings)"
        lines.append(
            f"  {instrument}{who}: {items} item(s) suppressed, fewer than "
            f"{threshold} matched respondents"
        )
    return lines


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "  (nothing yet)"
    return frame.to_string(index=False)
