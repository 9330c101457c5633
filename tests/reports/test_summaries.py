"""Response rates and pre/post change on known data, small groups suppressed."""

from __future__ import annotations

import pandas as pd
import pytest
from scipy import stats

from reports.prepost import prepost
from reports.response_rates import SUPPRESSED, response_rates

STAGES = ["sent", "delivered", "started", "completed"]


def _invitations(rows):
    """Invitations whose furthest stage is given (`failed`: never sent)."""
    records = []
    for i, (wave, home, furthest) in enumerate(rows):
        reached = STAGES[: STAGES.index(furthest) + 1] if furthest in STAGES else []
        records.append(
            {
                "invitation_id": i,
                "wave": wave,
                "instrument": "staff_morale",
                "home": home,
                **{f"reached_{s}": s in reached for s in STAGES},
            }
        )
    return pd.DataFrame(records)


def test_response_rates_count_the_funnel_and_suppress_small_homes():
    rows = [("baseline", "Big", "completed")] * 4 + [("baseline", "Big", "delivered")] * 2
    rows += [("baseline", "Big", "started"), ("baseline", "Big", "failed")]
    rows += [("baseline", "Small", "completed")] * 3
    table = response_rates(_invitations(rows), ["wave", "home"], threshold=5)
    big = table[table["home"] == "Big"].iloc[0]
    assert (big["invited"], big["sent"], big["delivered"], big["started"], big["completed"]) == (
        8,
        7,
        7,
        5,
        4,
    )
    assert big["response_rate"] == 0.5
    small = table[table["home"] == "Small"].iloc[0]
    assert all(small[c] == SUPPRESSED for c in ("invited", "completed", "response_rate"))


def _answers(pre, post, relation=None, item="morale"):
    rows = []
    for person, (a, b) in enumerate(zip(pre, post, strict=True)):
        for wave, value in (("baseline", a), ("end", b)):
            rows.append(
                {
                    "wave": wave,
                    "instrument": "staff_morale",
                    "relation": relation,
                    "person_id": person,
                    "subject_id": None,
                    "item_id": item,
                    "value": value,
                }
            )
    return pd.DataFrame(rows)


def test_prepost_matches_the_paired_t_test():
    pre, post = [2, 3, 3, 2, 4, 3, 2], [3, 4, 3, 3, 5, 4, 2]
    result = prepost(_answers(pre, post), "baseline", "end", threshold=5).iloc[0]
    expected = stats.ttest_rel(post, pre).confidence_interval(0.95)
    diffs = pd.Series(post) - pd.Series(pre)
    assert result["n_pairs"] == 7
    assert result["mean_pre"] == pytest.approx(sum(pre) / 7, abs=0.01)
    assert result["mean_diff"] == pytest.approx(diffs.mean(), abs=0.01)
    assert result["ci95_low"] == pytest.approx(expected.low, abs=0.01)
    assert result["ci95_high"] == pytest.approx(expected.high, abs=0.01)
    assert result["d_z"] == pytest.approx(diffs.mean() / diffs.std(), abs=0.01)


def test_prepost_pairs_only_people_who_answered_both_waves_and_suppresses_few():
    data = _answers([2, 3, 4, 3], [3, 3, 5, 4])
    extra = data.iloc[[0]].assign(person_id=99)  # answered the baseline only
    result = prepost(pd.concat([data, extra]), "baseline", "end", threshold=5).iloc[0]
    assert result["n_pairs"] == SUPPRESSED  # 4 pairs < 5: nothing is shown
    assert result["mean_diff"] == SUPPRESSED
