"""Where outgoing messages go. Providers sit behind two small interfaces so that tests and
the embedded defaults swap the provider, never the logic that decides what to send.

The embedded defaults are the development phone and mailbox: the message row stored
before sending *is* the delivery, read back on the `/dev/phone` and `/dev/mailbox` pages.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

from bot.config import Settings


@dataclass(frozen=True)
class SendResult:
    """The provider's answer to a send: its message id and the status it reported."""

    provider_id: str
    status: str


class SmsTransport(Protocol):
    """Sends one SMS."""

    name: str

    def send_sms(self, to: str, body: str) -> SendResult:
        """Send `body` to the E.164 number `to`."""
        ...


class EmailTransport(Protocol):
    """Sends one plain-text email."""

    name: str

    def send_email(self, to: str, subject: str, body: str) -> SendResult:
        """Send an email to `to`."""
        ...


class DevPhone:
    """The in-app development phone: every SMS is delivered to the `/dev/phone` page."""

    name = "dev-phone"

    def send_sms(self, to: str, body: str) -> SendResult:
        """Accept the message; it is already stored, so it is delivered at once."""
        return SendResult(provider_id=f"DEV{secrets.token_hex(16)}", status="delivered")


class DevMailbox:
    """The in-app development mailbox: every email is delivered to the `/dev/mailbox` page."""

    name = "dev-mailbox"

    def send_email(self, to: str, subject: str, body: str) -> SendResult:
        """Accept the email; it is already stored, so it is delivered at once."""
        return SendResult(
            provider_id=f"<{secrets.token_hex(16)}@dev.carepulse>", status="delivered"
        )


class TransportUnavailable(RuntimeError):
    """The configured provider cannot be used by this version."""


def make_transports(settings: Settings) -> tuple[SmsTransport, EmailTransport]:
    """The SMS and email transports the settings call for."""
    if settings.twilio or settings.smtp:
        # Twilio and SMTP delivery are built with their webhooks, retries and status
        # tracking; until then refuse rather than pretend to have sent anything.
        raise TransportUnavailable(
            "sending through Twilio/SMTP is not available yet; unset TWILIO_* and SMTP_* "
            "to use the development phone and mailbox"
        )
    return DevPhone(), DevMailbox()
