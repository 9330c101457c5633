"""SMS arithmetic and GSM-safe text: how many segments a message costs, and how to keep it one.

A text made only of GSM-7 characters is sent 7 bits a character: 160 characters fit one
segment, and a longer message is split into segments of 153 (each carries a header). The
GSM-7 extension table (``^{}\\[~]|€`` and form feed) is reached by an escape character, so
each of those counts as two. A single character outside GSM-7 (a curly quote, an emoji, a
"â") switches the whole message to UCS-2: 70 UTF-16 code units in one segment, 67 a segment
when split, and an emoji outside the Basic Multilingual Plane takes two code units.

When splitting, an escape pair or a UTF-16 surrogate pair is never cut across segments (as
carriers and Twilio do), so :func:`segments` packs characters greedily rather than dividing.

Pure functions only: no I/O, no Flask, no SQL.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from typing import Literal

from surveys.instruments import GSM7_BASIC_CHARS

__all__ = [
    "GSM7_BASIC_CHARS",
    "GSM7_EXTENSION_CHARS",
    "GSM7_MULTI_SEGMENT",
    "GSM7_SINGLE_SEGMENT",
    "UCS2_MULTI_SEGMENT",
    "UCS2_SINGLE_SEGMENT",
    "encoding",
    "fit_one_segment",
    "fits_one_segment",
    "gsm_safe",
    "segments",
]

GSM7_EXTENSION_CHARS = frozenset("^{}\\[~]|€\f")
"""Characters of the GSM 03.38 extension table: each is sent as escape + character (2 septets)."""

GSM7_SINGLE_SEGMENT = 160
"""Septets in a GSM-7 message that fits one segment."""
GSM7_MULTI_SEGMENT = 153
"""Septets in each segment of a concatenated (multi-segment) GSM-7 message."""
UCS2_SINGLE_SEGMENT = 70
"""UTF-16 code units in a UCS-2 message that fits one segment."""
UCS2_MULTI_SEGMENT = 67
"""UTF-16 code units in each segment of a concatenated UCS-2 message."""

Encoding = Literal["GSM-7", "UCS-2"]

# Characters that have a close GSM-7 equivalent but no Unicode decomposition to one.
_REPLACEMENTS = {
    "\u2018": "'",  # left single quote
    "\u2019": "'",  # right single quote / apostrophe
    "\u201a": "'",  # single low-9 quote
    "\u201b": "'",  # single high-reversed-9 quote
    "\u2032": "'",  # prime
    "\u00b4": "'",  # acute accent
    "`": "'",
    "\u201c": '"',  # left double quote
    "\u201d": '"',  # right double quote
    "\u201e": '"',  # double low-9 quote
    "\u201f": '"',  # double high-reversed-9 quote
    "\u2033": '"',  # double prime
    "\u00ab": '"',  # «
    "\u00bb": '"',  # »
    "\u2010": "-",  # hyphen
    "\u2011": "-",  # non-breaking hyphen
    "\u2012": "-",  # figure dash
    "\u2013": "-",  # en dash
    "\u2014": "-",  # em dash
    "\u2015": "-",  # horizontal bar
    "\u2212": "-",  # minus sign
    "\u2026": "...",  # ellipsis
    "\u2044": "/",  # fraction slash (from the decomposition of ½)
    "\u2022": "-",  # bullet
    "\u00b7": "-",  # middle dot
    "\t": " ",
    "\u0141": "L",  # Ł
    "\u0142": "l",  # ł
    "\u0110": "D",  # Đ
    "\u0111": "d",  # đ
    "\u00d0": "D",  # Ð
    "\u00f0": "d",  # ð
    "\u0126": "H",  # Ħ
    "\u0127": "h",  # ħ
    "\u0131": "i",  # dotless i
    "\u0152": "OE",  # Œ
    "\u0153": "oe",  # œ
    "\u00de": "Th",  # Þ
    "\u00fe": "th",  # þ
    "\u0138": "k",  # ĸ
    "\u014a": "N",  # Ŋ
    "\u014b": "n",  # ŋ
    "\u0166": "T",  # Ŧ
    "\u0167": "t",  # ŧ
}


def _is_gsm7(ch: str) -> bool:
    return ch in GSM7_BASIC_CHARS or ch in GSM7_EXTENSION_CHARS


def encoding(text: str) -> Encoding:
    """``"GSM-7"`` if every character of `text` is GSM-7 (basic or extension), else ``"UCS-2"``."""
    return "GSM-7" if all(_is_gsm7(ch) for ch in text) else "UCS-2"


def _pack(units: Iterable[int], single: int, multi: int) -> int:
    """Segments needed for characters costing `units` each, never splitting one character."""
    costs = list(units)
    if sum(costs) <= single:
        return 1
    count, used = 1, 0
    for cost in costs:
        if used + cost > multi:
            count, used = count + 1, 0
        used += cost
    return count


def segments(text: str) -> int:
    """How many SMS segments `text` is sent as.

    GSM-7: 160 septets in one segment, else 153 a segment (extension characters cost 2).
    UCS-2: 70 UTF-16 code units in one segment, else 67 a segment (an emoji usually costs 2).
    An empty message still counts as one segment.
    """
    if encoding(text) == "GSM-7":
        costs = (2 if ch in GSM7_EXTENSION_CHARS else 1 for ch in text)
        return _pack(costs, GSM7_SINGLE_SEGMENT, GSM7_MULTI_SEGMENT)
    costs = (2 if ord(ch) > 0xFFFF else 1 for ch in text)
    return _pack(costs, UCS2_SINGLE_SEGMENT, UCS2_MULTI_SEGMENT)


def fits_one_segment(text: str) -> bool:
    """Whether `text` is GSM-7 and fits one segment (160 septets)."""
    return encoding(text) == "GSM-7" and segments(text) == 1


def gsm_safe(text: str) -> str:
    """`text` in GSM-7 characters only, so that one stray character cannot make it UCS-2.

    Curly quotes become straight ones, en and em dashes "-", an ellipsis "...", a tab a
    space; accents are dropped ("Siân" -> "Sian", "Zoë" -> "Zoe", "Łukasz" -> "Lukasz")
    except where GSM-7 has the accented letter itself (é, ü, ñ ...). Extension-table
    characters (``€``, brackets) are kept: they are GSM-7, at two septets each. Anything
    with no GSM-7 equivalent (an emoji, Arabic or Chinese script) is removed.
    """
    out: list[str] = []
    for ch in text:
        if _is_gsm7(ch):
            out.append(ch)
            continue
        if ch in _REPLACEMENTS:
            out.append(_REPLACEMENTS[ch])
            continue
        if ch.isspace():
            out.append(" ")
            continue
        plain = "".join(
            c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c)
        )
        converted = "".join(_REPLACEMENTS.get(c, c) for c in plain)
        out.append("".join(c for c in converted if _is_gsm7(c)))
    return "".join(out)


def fit_one_segment(*variants: str) -> str:
    """The first of `variants` that fits one GSM-7 segment, made GSM-safe.

    Give the variants longest (most informative) first and end with one that always fits:
    if none fits, the last one is returned (GSM-safe) whatever its length.
    """
    if not variants:
        raise ValueError("fit_one_segment needs at least one variant")
    safe = [gsm_safe(v) for v in variants]
    return next((v for v in safe if segments(v) == 1), safe[-1])
