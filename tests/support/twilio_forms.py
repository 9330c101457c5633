"""What Twilio posts to an app's SMS webhook, and how it counts a text's segments.

Standard library only, and nothing at import time: `tests.support.twilio_server` (the fake
Twilio) builds its inbound webhooks from here, and so do the benchmarks' load generators
(bench/harness.py), which start in fresh processes and must not wait for `requests`.
"""

from __future__ import annotations

import math

API_VERSION = "2010-04-01"

_GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = set("\f^{}\\[~]|€")


def num_segments(body: str) -> int:
    """How many SMS segments `body` takes: GSM-7 (160, or 153 when split) else UCS-2 (70/67)."""
    if not body:
        return 1
    if all(c in _GSM7_BASIC or c in _GSM7_EXTENSION for c in body):
        units = sum(2 if c in _GSM7_EXTENSION else 1 for c in body)
        single, multi = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi = 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def inbound_form(sid: str, account_sid: str, from_: str, to: str, body: str) -> dict[str, str]:
    """The form of an incoming SMS `sid` as Twilio posts it to the messaging webhook: its
    field set, in Twilio's order (which is also the order of the encoded body)."""
    return {
        "ToCountry": "GB",
        "ToState": "",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ToCity": "",
        "FromZip": "",
        "SmsSid": sid,
        "FromState": "",
        "SmsStatus": "received",
        "FromCity": "",
        "Body": body,
        "FromCountry": "GB",
        "To": to,
        "ToZip": "",
        "NumSegments": str(num_segments(body)),
        "MessageSid": sid,
        "AccountSid": account_sid,
        "From": from_,
        "ApiVersion": API_VERSION,
    }
