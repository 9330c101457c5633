"""Time zones that put "now" inside a programme's sending window, for tests that send for real.

Messages go out only inside the programme's window (09:00-20:00 local by default), and the
fake Twilio and SMTP servers stamp real times, so a test that sends now picks the
programme's zone to make it early afternoon there.
"""

from __future__ import annotations

import datetime as dt


def daytime_zone(now: dt.datetime) -> str:
    """A fixed-offset zone (Etc/GMT±N) where it is about 13:00 at `now`."""
    offset = 13 - now.astimezone(dt.UTC).hour
    if offset > 14:
        offset -= 24
    if offset < -12:
        offset += 24
    if offset == 0:
        return "Etc/GMT"
    # POSIX-style names: Etc/GMT-3 is three hours AHEAD of UTC.
    return f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"
