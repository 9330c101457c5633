"""Small hand-built frames with the columns `reports.frames` gives the report's parts, for
the unit tests of those parts (no database)."""

from __future__ import annotations

import pandas as pd

from reports.frames import ANSWER_COLUMNS, ITEM_COLUMNS


def items_of(rows, instrument: str, version: int = 1) -> pd.DataFrame:
    """Items on a 1-5 scale, in this order, from rows of (item_id, reverse, scales); an
    item's text is its id."""
    return pd.DataFrame(
        [
            [instrument, version, position, item_id, item_id, 1, 5, reverse, scales]
            for position, (item_id, reverse, scales) in enumerate(rows, start=1)
        ],
        columns=ITEM_COLUMNS,
    )


def answers_of(
    rows,
    instrument: str,
    *,
    role: str,
    channel: str,
    version: int = 1,
    relation: str | None = None,
) -> pd.DataFrame:
    """Completed answers, one invitation each, from rows of (wave, person_id, item_id,
    value[, subject_id]): cohort c1, Willow Court, given by people in `role` by `channel`."""
    records = []
    for n, (wave, person, item_id, value, *subject) in enumerate(rows):
        records.append(
            {
                "invitation_id": n,
                "cohort": "c1",
                "wave": wave,
                "wave_kind": wave,
                "wave_opens_at": None,
                "instrument": instrument,
                "instrument_version_id": version,
                "relation": relation,
                "person_id": person,
                "subject_id": subject[0] if subject else None,
                "home": "Willow Court",
                "role": role,
                "item_id": item_id,
                "value": value,
                "channel": channel,
                "completed": True,
            }
        )
    return pd.DataFrame(records, columns=ANSWER_COLUMNS)
