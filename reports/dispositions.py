"""AAPOR final dispositions of invitations, and the AAPOR outcome rates built from them.

Codes and formulas follow AAPOR, *Standard Definitions: Final Dispositions of Case Codes
and Outcome Rates for Surveys*, 10th edition (2023), in its "Internet surveys of
specifically named persons" form: every invitation is a case, one named person asked to
answer one instrument in one wave (for a 360, about one subject manager).

Each invitation gets exactly one code, by the first rule that matches, in this order:

1. NE "left before the wave opened": the roster's `active_to` (the first day the person
   is no longer active) is on or before the wave's opening day.
2. NE "joined after the wave closed": `active_from` is after the wave's closing day.
3. I "answered at least 80% of items": items answered / items asked >= `complete_share`.
4. P "answered 50%-80% of items": at least `partial_share`, below `complete_share`.
5. R "opted out": STOP, unsubscribe, or a provider's opted-out error (an explicit refusal).
6. R "broke off": started (replied, or answered on the form) but below `partial_share`.
7. NC "left during the wave": active on the opening day, left before the closing day,
   and did not answer enough for 3-6 (eligible, then unavailable; AAPOR 2.26).
8. NC "undeliverable": the invitation failed (number or address refused by the provider).
9. NC "delivered, not answered": a delivery report, or any later stage, but no answer.
10. UO "sent, no delivery evidence": sent, and nothing shows it arrived.
11. UH "never sent": still pending, or expired before any contact attempt.

Choices an evaluator may cite:

- Items answered means items with a value; a skipped item (SMS `SKIP`, left blank on the
  form) is not answered. The shares are AAPOR's own example (under 50% of applicable items
  a break-off, 50-80% a partial, 80% or more a complete). A submitted questionnaire with
  most items skipped is therefore not a complete; `response_rate` in the response-rate
  tables still counts submitted questionnaires (status `completed`).
- Eligibility comes from the roster: the people active in a home of the cohort on the day
  the wave opens (the day is taken in the programme's time zone, as when the wave opened).
  A case outside that population is NE whatever happened to it, as AAPOR classes an
  ineligible case; its answers, if any, remain in `answers_frame`.
- O (other eligible non-interview) is never assigned: AAPOR counts O cases as contacted
  (in CON1's numerator and COOP1's denominator), and carepulse records no outcome of that
  kind (death, incapacity, language). A person who left during the wave may never have
  been reached, so they are a non-contact, as AAPOR classes a person unavailable during
  the field period; their reason keeps them apart. The O column is kept, always 0.
- An undeliverable contact (status `failed`) is a non-contact, not unknown eligibility:
  the roster says the person was on the staff of the home when the wave opened, so they
  were eligible; only the number or address on file was wrong.
- An email that the SMTP server accepted and that was never answered is UO. carepulse gets
  no delivery reports or bounces for email, so acceptance by the relay is the only
  evidence, and it does not show that the message reached the person (AAPOR 3.19,
  "nothing ever returned"). An SMS sent without a delivery report is UO for the same
  reason. An email whose link was used to answer is I, P or R by the rules above.
- None of the four rates computed here distinguishes NC, UH and UO: RR1, RR2 and CON1 put
  all three in the denominator (they assume every unknown case is eligible, e = 1), and
  COOP1 leaves them out. The split matters only for reading the table and for RR3/RR4.
- While a wave is open these are interim codes (a `started` case may still complete).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

DISPOSITION_CODES = ("I", "P", "R", "NC", "O", "UH", "UO", "NE")
"""AAPOR codes: complete, partial, refusal and break-off, non-contact, other eligible
non-response, unknown eligibility (no contact attempted / other), not eligible."""

DISPOSITION_COLUMNS = ("disposition", "disposition_reason")
"""The columns `dispositions` adds to the invitations frame it is given."""

AAPOR_RATES = ("RR1", "RR2", "COOP1", "CON1")
"""The outcome rates `aapor_rates` returns, in this order."""

FUNNEL_STAGES = ("sent", "delivered", "started", "completed")
"""The stages an invitation moves through, in order (`reached_<stage>` in the frame)."""

METHOD_NOTE = (
    "Each invitation is given an AAPOR final disposition (Standard Definitions, 10th ed.): "
    "complete (I) when at least 80% of its items were answered, partial (P) at 50-80%, "
    "refusal or break-off (R) when the person opted out or started but answered under 50%, "
    "non-contact (NC) when it was delivered but not answered, could not be delivered, or "
    "the person left the home during the wave, unknown eligibility when it was "
    "sent with no evidence of delivery (UO: every unanswered email, since email gives no "
    "delivery reports) or never sent (UH), and not eligible (NE) when the roster shows the "
    "person had left before the wave opened or joined after it closed. Other (O) is not "
    "used: nothing carepulse records is a contacted case of that kind. "
    "RR1 = I / (I+P+R+NC+O+UH+UO); RR2 counts partials too; COOP1 = I / (I+P+R+O); "
    "CON1 = (I+P+R+O) / (I+P+R+NC+O+UH+UO). Response rate = submitted / invited."
)
"""The method in one paragraph, for the notes of every report that shows these rates."""

COMPLETE_SHARE = 0.8
PARTIAL_SHARE = 0.5


def dispositions(
    invitations: pd.DataFrame,
    complete_share: float = COMPLETE_SHARE,
    partial_share: float = PARTIAL_SHARE,
    *,
    timezone: str = "Europe/London",
) -> pd.DataFrame:
    """`invitations` (from `reports.frames.invitations_frame`) with `disposition` and
    `disposition_reason` added; the rules are in this module's docstring.

    `timezone` is the programme's: it decides which calendar day a wave opened and closed,
    to compare with the roster's `active_from`/`active_to` dates.
    """
    if not 0 < partial_share <= complete_share <= 1:
        raise ValueError(
            f"need 0 < partial_share <= complete_share <= 1, got {partial_share}, {complete_share}"
        )
    rules = _rules(invitations, complete_share, partial_share, timezone)
    conditions = [condition.to_numpy(dtype=bool) for condition, _, _ in rules]
    out = invitations.copy()
    out["disposition"] = np.select(conditions, [code for _, code, _ in rules], default="UH")
    out["disposition_reason"] = np.select(
        conditions, [reason for _, _, reason in rules], default="never sent"
    )
    return out


def _rules(
    frame: pd.DataFrame, complete_share: float, partial_share: float, timezone: str
) -> list[tuple[pd.Series, str, str]]:
    """(condition, code, reason) in the order they are tried; the first true one wins."""
    opens = _local_day(frame["wave_opens_at"], timezone)
    closes = _local_day(frame["wave_closes_at"], timezone)
    active_from = pd.to_datetime(frame["active_from"])
    active_to = pd.to_datetime(frame["active_to"])  # NaT (still active) compares False
    share = _answered_share(frame)
    status = frame["status"]
    engaged = (
        frame["responded"].astype(bool)
        | frame["reached_started"].astype(bool)
        | status.isin(["started", "completed"])
    )
    reached = reached_stages(frame)
    complete_pct, partial_pct = f"{complete_share:.0%}", f"{partial_share:.0%}"
    return [
        (active_to <= opens, "NE", "left before the wave opened"),
        (active_from > closes, "NE", "joined after the wave closed"),
        (share >= complete_share, "I", f"answered at least {complete_pct} of items"),
        (share >= partial_share, "P", f"answered {partial_pct}-{complete_pct} of items"),
        (status == "opted_out", "R", "opted out"),
        (engaged, "R", "broke off"),
        (active_to <= closes, "NC", "left during the wave"),
        (status == "failed", "NC", "undeliverable"),
        (reached["delivered"], "NC", "delivered, not answered"),
        (reached["sent"], "UO", "sent, no delivery evidence"),
    ]


def _local_day(instants: pd.Series, timezone: str) -> pd.Series:
    """The calendar day of each instant in `timezone`, as a naive midnight timestamp.

    Naive instants are taken as UTC, which is how carepulse stores them.
    """
    aware = pd.to_datetime(instants, utc=True)
    return aware.dt.tz_convert(timezone).dt.tz_localize(None).dt.normalize()


def _answered_share(frame: pd.DataFrame) -> pd.Series:
    """Items answered over items asked; an instrument with no known items counts as fully
    answered when submitted and not at all otherwise."""
    total = frame["items_total"].astype(float)
    share = frame["items_answered"].astype(float) / total.where(total > 0)
    submitted = (frame["status"] == "completed").astype(float)
    return share.fillna(submitted)


def reached_stages(frame: pd.DataFrame) -> pd.DataFrame:
    """Per invitation (same index), whether it reached each of `FUNNEL_STAGES` or a later one.

    The current status counts as reached. The flags are cumulative because a later stage
    proves the earlier ones even when no event recorded them (email has no delivery
    reports, yet an answered email arrived).
    """
    stages = list(FUNNEL_STAGES)
    flags = np.column_stack(
        [frame[f"reached_{stage}"].astype(bool) | (frame["status"] == stage) for stage in stages]
    )
    later_or_this = np.logical_or.accumulate(flags[:, ::-1], axis=1)[:, ::-1]
    return pd.DataFrame(later_or_this, columns=stages, index=frame.index)


def aapor_rates(counts: Mapping[str, int]) -> dict[str, float]:
    """AAPOR RR1, RR2, COOP1 and CON1 from disposition counts (missing codes count 0).

    From *Standard Definitions* (AAPOR, 10th ed., 2023), with I complete, P partial,
    R refusal and break-off, NC non-contact, O other, UH and UO unknown eligibility (NE is
    in no formula):

    - RR1 = I / ((I + P) + (R + NC + O) + (UH + UO))
    - RR2 = (I + P) / ((I + P) + (R + NC + O) + (UH + UO))
    - COOP1 = I / ((I + P) + R + O)
    - CON1 = ((I + P) + R + O) / ((I + P) + (R + NC + O) + (UH + UO))

    A rate with a zero denominator is NaN (nothing to rate), never an error.
    """
    n = {code: int(counts.get(code, 0)) for code in DISPOSITION_CODES}
    interviews = n["I"] + n["P"]
    cases = interviews + n["R"] + n["NC"] + n["O"] + n["UH"] + n["UO"]
    contacted = interviews + n["R"] + n["O"]
    return {
        "RR1": _ratio(n["I"], cases),
        "RR2": _ratio(interviews, cases),
        "COOP1": _ratio(n["I"], contacted),
        "CON1": _ratio(contacted, cases),
    }


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan
