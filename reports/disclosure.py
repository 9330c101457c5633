"""Disclosure control: the one place that decides whether a figure may be shown.

Every table the reporting layer produces goes through here before it reaches a CSV, a
workbook, a chart, the dashboard or the API. A figure computed from fewer people than the
programme's anonymity threshold is replaced by `SUPPRESSED`.
"""

from __future__ import annotations

SUPPRESSED = "suppressed"
"""The marker that replaces every figure of a suppressed group, in every output."""


def too_small(n: int, threshold: int) -> bool:
    """Whether a group of `n` people is too small to report (0 < n < threshold).

    An empty group (n = 0) reveals nobody and is shown as 0.
    """
    return 0 < n < threshold
