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


class SendError(Exception):
    """A provider refused or failed a send.

    `permanent` errors will fail again however often they are retried (an invalid or
    unsubscribed number); others (rate limits, provider outages, timeouts) are worth
    retrying later. `opted_out` means the recipient has unsubscribed at the carrier.
    """

    def __init__(self, message: str, code: str | None, permanent: bool, opted_out: bool = False):
        super().__init__(message)
        self.code, self.permanent, self.opted_out = code, permanent, opted_out


# Twilio error codes that no retry will cure. 21610: the recipient replied STOP.
# https://www.twilio.com/docs/api/errors
TWILIO_PERMANENT = {
    21211,  # invalid 'To' number
    21408,  # region not enabled
    21610,  # unsubscribed recipient
    21612,  # cannot route to this number
    21614,  # 'To' is not a mobile number
    30003,  # unreachable destination handset
    30004,  # message blocked
    30005,  # unknown destination handset
    30006,  # landline or unreachable carrier
    30007,  # carrier violation (filtered)
}
TWILIO_OPTED_OUT = {21610}
SMS_VALIDITY_SECONDS = 1800
"""A text not delivered within 30 minutes is dropped: a survey reminder that arrives hours
late (in the night, say) does more harm than good."""
TWILIO_TIMEOUT_SECONDS = 10.0


class TwilioSms:
    """SMS through the official Twilio SDK's Messages API."""

    name = "twilio"

    def __init__(self, settings: Settings, timeout: float = TWILIO_TIMEOUT_SECONDS) -> None:
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        assert settings.twilio is not None
        self.settings = settings.twilio
        self.status_callback = f"{settings.public_base_url}/twilio/status"
        # The SDK waits forever by default; a hung request must not stall the sender.
        self.client = Client(
            self.settings.account_sid,
            self.settings.auth_token,
            http_client=TwilioHttpClient(timeout=timeout),
        )
        if self.settings.api_base_url:
            # Region/edge settings would rewrite the host (127.0.0.1 -> 127.ie1.0.1).
            self.client.region = self.client.edge = None
            self.client.api.base_url = self.settings.api_base_url

    def send_sms(self, to: str, body: str) -> SendResult:
        """Send one SMS; raises SendError with Twilio's code when it is refused."""
        from requests.exceptions import RequestException
        from twilio.base.exceptions import TwilioException, TwilioRestException

        sender: dict[str, str] = (
            {"messaging_service_sid": self.settings.messaging_service_sid}
            if self.settings.messaging_service_sid
            else {"from_": self.settings.from_number or ""}
        )
        try:
            message = self.client.messages.create(
                to=to,
                body=body,
                status_callback=self.status_callback,
                validity_period=SMS_VALIDITY_SECONDS,
                **sender,
            )
        except TwilioRestException as exc:
            code = exc.code if exc.code is not None else exc.status
            permanent = exc.code in TWILIO_PERMANENT
            raise SendError(
                f"Twilio refused the message: {exc.msg}",
                str(code),
                permanent,
                opted_out=exc.code in TWILIO_OPTED_OUT,
            ) from None
        except (RequestException, TwilioException) as exc:
            raise SendError(
                f"Twilio did not answer: {exc.__class__.__name__}", "timeout", permanent=False
            ) from None
        return SendResult(provider_id=message.sid or "", status=message.status or "queued")


class TransportUnavailable(RuntimeError):
    """The configured provider cannot be used by this version."""


def make_transports(settings: Settings) -> tuple[SmsTransport, EmailTransport]:
    """The SMS and email transports the settings call for."""
    if settings.smtp:
        # Email delivery through SMTP comes with its retries and bounce handling; until
        # then refuse rather than pretend to have sent anything.
        raise TransportUnavailable(
            "sending email through SMTP is not available yet; unset SMTP_HOST to use the "
            "development mailbox"
        )
    sms: SmsTransport = TwilioSms(settings) if settings.twilio else DevPhone()
    return sms, DevMailbox()
