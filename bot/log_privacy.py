"""Log hygiene: no phone number, email address, link token, password or credential in a log.

`PrivacyFilter` rewrites a log record's text (message, exception and stack text) so that
phone numbers keep only their last 3 digits, email addresses only their first character and
domain, survey, unsubscribe and manager-report links (`/s/`, `/u/`, `/my-360/`) lose their
token, API tokens keep only their public prefix, and passwords, `Authorization`/`Cookie`
headers, credentials in URLs and the app's own secrets (SECRET_KEY, the Twilio auth token,
the SMTP password) are replaced by `[redacted]`. It never drops a record.

`install(app)` applies it to every record made anywhere in the process, werkzeug's access
log (`"GET /s/<token> HTTP/1.1" 200`) included, by wrapping the log record factory: a
filter on a logger does not see records that propagate to it from child loggers, and
handlers come and go (the clock's `basicConfig`, gunicorn's own), but every record is made
by the factory. The filter can also be attached to a handler, e.g. in a gunicorn logging
config, where records are made by another process's factory.
"""

from __future__ import annotations

import logging
import re
import threading
import traceback
from collections.abc import Iterable
from typing import Any

from flask import Flask

REDACTED = "[redacted]"
TOKEN = "[token]"

# A phone number as written in logs: E.164 (+447700900123), URL-encoded (%2B44..., spaces as
# + or %20 in a query string), or a UK number from 0 or 44, with spaces, hyphens or
# brackets; standing on its own, so that dates, times, ids and hex digests (digits touching
# letters) are left alone. 10-15 digits (`mask_phone` counts them).
_PHONE = re.compile(r"(?<![\w.%+])(?:(?:\+|%2[Bb])[1-9]|0|44)(?:[\d ()+\-]|%20){7,24}\d(?!\w)")
_SPACE = "\x00"  # stands in for %20 while digits are counted: its 2 and 0 are not digits
_EMAIL = re.compile(
    r"\b([A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]*(@|%40)([A-Za-z0-9.\-]+\.[A-Za-z]{2,})"
)
_LINK = re.compile(r"(/|%2[Ff])(s|u|my-360)(/|%2[Ff])[A-Za-z0-9_.\-]+")
_API_TOKEN = re.compile(r"\bcp_([0-9a-f]{8})_[A-Za-z0-9_\-]+")
_URL_CREDENTIALS = re.compile(r"(\b[a-z][a-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@", re.IGNORECASE)
_HEADER = re.compile(
    r"\b((?:proxy-)?authorization|cookie|set-cookie|x-twilio-signature)(['\"]?\s*[:=]\s*['\"]?)"
    r"[^'\"\r\n]+",
    re.IGNORECASE,
)
# csrf_token, SMTP_PASSWORD, TWILIO_AUTH_TOKEN, api_key, ...: whatever a key names.
_SECRET_FIELD = re.compile(
    r"\b([\w\-]*(?:password|passwd|pwd|secret|token|api_?key)[\w\-]*)"
    r"(['\"]?\s*[:=]\s*['\"]?)[^\s'\"&,;}]+",
    re.IGNORECASE,
)
_SMTP_AUTH = re.compile(r"\b(AUTH (?:PLAIN|LOGIN|CRAM-MD5|XOAUTH2))\s+[^\s'\"]+", re.IGNORECASE)


def mask_phone(match: re.Match[str]) -> str:
    """A matched phone number with every digit but the last 3 starred (separators kept);
    left as it is unless it has 10 to 15 digits in at most 5 groups."""
    text = match.group(0)
    prefix = ""
    if text[:3].upper() == "%2B":
        prefix, text = text[:3], text[3:]
    text = text.replace("%20", _SPACE)
    digits = sum(c.isdigit() for c in text)
    # Numbers are written in a few groups; "0 1 2 3 4 5 6 7 8 9" is a list, not a number.
    groups = len(re.split(r"[ +\-\x00]+", text.lstrip("+")))
    if not 10 <= digits <= 15 or groups > 5:
        return match.group(0)
    keep, out = 3, []
    for char in reversed(text):
        if char.isdigit():
            out.append(char if keep > 0 else "*")
            keep -= 1
        else:
            out.append(char)
    return prefix + "".join(reversed(out)).replace(_SPACE, "%20")


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with personal data and credentials masked (see the module docstring)."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    text = _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _SMTP_AUTH.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _API_TOKEN.sub(lambda m: f"cp_{m.group(1)}_{REDACTED}", text)
    text = _SECRET_FIELD.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _LINK.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(3)}{TOKEN}", text)
    text = _EMAIL.sub(lambda m: f"{m.group(1)}***{m.group(2)}{m.group(3)}", text)
    return _PHONE.sub(mask_phone, text)


class PrivacyFilter(logging.Filter):
    """Masks a record's message, exception and stack text in place; keeps every record.

    `secrets` are literal values never to appear (the app's SECRET_KEY, Twilio auth token,
    SMTP password); more can be added with `add_secrets`.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # A tuple, replaced whole: a record masked on one thread never sees it half-built.
        self._secrets: tuple[str, ...] = ()
        self._lock = threading.Lock()
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        """Also redact these literal values (empty and very short ones are ignored)."""
        # A 1-3 character "secret" would star out every word containing it.
        with self._lock:
            known = set(self._secrets) | {s for s in secrets if s and len(s) >= 4}
            # Longest first, so a secret containing another is replaced whole.
            self._secrets = tuple(sorted(known, key=len, reverse=True))

    def mask(self, text: str) -> str:
        """`text` masked with this filter's secrets."""
        return mask(text, self._secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask `record` (once) and let it through."""
        if getattr(record, "_carepulse_masked", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep what there is, masked
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.mask(message), None
        if record.exc_info and not record.exc_text:
            # Formatters use exc_text when it is set: the traceback is masked once, here.
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if record.stack_info:
            record.stack_info = self.mask(record.stack_info)
        record._carepulse_masked = True
        return True


_FILTER = PrivacyFilter()
"""The filter `install` applies to every record of the process."""


def _masking_factory(inner: Any) -> Any:
    def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = inner(*args, **kwargs)
        _FILTER.filter(record)
        return record

    make_record._carepulse_privacy = True  # type: ignore[attr-defined]
    return make_record


def install(app: Flask) -> PrivacyFilter:
    """Mask every log record of this process from now on, with the app's secrets."""
    settings = app.config["CAREPULSE"]
    _FILTER.add_secrets(
        [
            settings.secret_key,
            settings.twilio.auth_token if settings.twilio else "",
            (settings.smtp.password or "") if settings.smtp else "",
        ]
    )
    factory = logging.getLogRecordFactory()
    if not getattr(factory, "_carepulse_privacy", False):  # once per process, not per app
        logging.setLogRecordFactory(_masking_factory(factory))
    return _FILTER
