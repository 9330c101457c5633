"""When messages may go out: the programme's sending window in its own time zone.

Nobody is texted or emailed in the night: a message due outside the window waits for the
window's next opening. Times are local wall-clock times (09:00 means 09:00 in London in
both GMT and BST), so the window is right on either side of the March and October clock
changes. Pure functions: no database, no clock of their own.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

DEFAULT_WINDOW = ("09:00", "20:00")
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class SendWindow:
    """Daily local hours [start, end) in a time zone during which messages may be sent."""

    start: dt.time
    end: dt.time
    tz: ZoneInfo

    @classmethod
    def of(cls, settings: Mapping[str, Any] | None, timezone: str) -> SendWindow:
        """The window from a programme's settings (`send_window: {start, end}`)."""
        window = (settings or {}).get("send_window") or {}
        start = parse_hhmm(window.get("start", DEFAULT_WINDOW[0]))
        end = parse_hhmm(window.get("end", DEFAULT_WINDOW[1]))
        return cls(start, end, ZoneInfo(timezone))

    def contains(self, when: dt.datetime) -> bool:
        """Whether `when` (aware) falls inside the window, in local time."""
        local = when.astimezone(self.tz).time()
        return self.start <= local < self.end

    def next_opening(self, when: dt.datetime) -> dt.datetime:
        """`when` itself if inside the window, else the window's next start (as UTC)."""
        if self.contains(when):
            return when.astimezone(dt.UTC)
        local = when.astimezone(self.tz)
        day = local.date() if local.time() < self.start else local.date() + dt.timedelta(days=1)
        # Combining a local date and wall-clock time, then attaching the zone, picks the
        # right UTC offset for that day (GMT or BST).
        return dt.datetime.combine(day, self.start, tzinfo=self.tz).astimezone(dt.UTC)


def parse_hhmm(value: Any) -> dt.time:
    """A `HH:MM` string as a time; ValueError naming the value otherwise."""
    text = str(value)
    match = _HHMM.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a time like 09:00")
    return dt.time(int(match.group(1)), int(match.group(2)))
