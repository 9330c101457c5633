"""Where outgoing messages go. Providers sit behind two small interfaces so that tests and
the embedded defaults swap the provider, never the logic that decides what to send.

The embedded defaults are the development phone and mailbox: the message row stored
before sending *is* the delivery, read back on the `/dev/phone` and `/dev/mailbox` pages.
"""

from __future__ import annotations

import logging
import random
import secrets
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Protocol

from bot.config import Settings

log = logging.getLogger(__name__)


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
    """Sends one email: a plain-text body, optionally with an HTML alternative."""

    name: str

    def send_email(
        self,
        to: str,
        subject: str,
        body: str,
        html: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> SendResult:
        """Send an email to `to`; `headers` are extra header fields (List-Unsubscribe...)."""
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

    def send_email(
        self,
        to: str,
        subject: str,
        body: str,
        html: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> SendResult:
        """Accept the email; it is already stored (its plain text), so it is delivered."""
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


SMTP_TIMEOUT_SECONDS = 10.0
SMTP_ATTEMPTS = 3
SMTP_BASE_DELAY_SECONDS = 0.5
# Header fields the transport writes itself; a caller's `headers` cannot replace them.
_OWN_HEADERS = {"from", "to", "subject", "date", "message-id"}
# 5xx replies about how we use the relay (TLS or login required, credentials refused),
# which say nothing about the recipient: never a reason to fail an invitation for good.
_RELAY_POLICY = {530, 534, 535, 538}


class _Transient(Exception):
    """One attempt failed in a way a later attempt may not: code and message for SendError."""

    def __init__(self, message: str, code: str, retry: bool = True) -> None:
        super().__init__(message)
        self.code, self.retry = code, retry


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    return " ".join(text.split())


class SmtpMail:
    """Email through an SMTP relay (STARTTLS and login when configured).

    One connection per email. A 4xx reply, a refused connection or a timeout is retried
    inside the call (`attempts` in all, exponential backoff from `base_delay` with jitter);
    if every attempt fails the SendError is transient, so the invitation stays pending for
    the next run. A 5xx reply to the sender, the recipient or the message is permanent and
    is not retried. Failures that are the relay's or the configuration's (TLS, login, a
    530/535 "authentication required" reply) are transient but not retried at once: they
    need an operator, not another try, and must not fail the invitation.
    """

    name = "smtp"

    def __init__(
        self,
        settings: Settings,
        *,
        timeout: float = SMTP_TIMEOUT_SECONDS,
        attempts: int = SMTP_ATTEMPTS,
        base_delay: float = SMTP_BASE_DELAY_SECONDS,
        ssl_context: ssl.SSLContext | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        assert settings.smtp is not None
        self.smtp = settings.smtp
        self.mail_from = settings.mail_from
        self.domain = settings.mail_from.rpartition("@")[2]
        self.timeout, self.attempts, self.base_delay = timeout, max(1, attempts), base_delay
        self.ssl_context = ssl_context
        self.sleep = sleep

    def __repr__(self) -> str:  # never the password
        return f"SmtpMail(host={self.smtp.host!r}, port={self.smtp.port})"

    def compose(
        self,
        to: str,
        subject: str,
        body: str,
        html: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> EmailMessage:
        """The message as it will be sent: plain text, with HTML as its alternative."""
        message = EmailMessage()
        message["From"] = self.mail_from
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=self.domain)
        for field_name, value in (headers or {}).items():
            if field_name.lower() not in _OWN_HEADERS:
                message[field_name] = value
        message.set_content(body)
        if html is not None:
            message.add_alternative(html, subtype="html")
        return message

    def send_email(
        self,
        to: str,
        subject: str,
        body: str,
        html: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> SendResult:
        """Send one email; raises SendError (permanent for a 5xx reply) when it fails."""
        try:
            message = self.compose(to, subject, body, html, headers)
        except ValueError as exc:  # a line break in a header: nothing any retry can send
            raise SendError(
                f"the email cannot be built: {exc}", "invalid", permanent=True
            ) from None
        for attempt in range(1, self.attempts + 1):
            try:
                self._send_once(message, to)
            except _Transient as exc:
                log.warning(
                    "SMTP attempt %d/%d to %s:%d failed: %s",
                    attempt,
                    self.attempts,
                    self.smtp.host,
                    self.smtp.port,
                    exc,
                )
                if not exc.retry or attempt == self.attempts:
                    raise SendError(str(exc), exc.code, permanent=False) from None
                self.sleep(self._delay(attempt))
                continue
            return SendResult(provider_id=str(message["Message-ID"]), status="sent")
        raise AssertionError("unreachable")  # pragma: no cover

    def _delay(self, attempt: int) -> float:
        """Exponential backoff with jitter: base, 2*base, 4*base... each times 0.5 to 1.5."""
        return self.base_delay * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)

    def _send_once(self, message: EmailMessage, to: str) -> None:
        where = f"{self.smtp.host}:{self.smtp.port}"
        try:
            with smtplib.SMTP(self.smtp.host, self.smtp.port, timeout=self.timeout) as client:
                if self.smtp.starttls:
                    client.starttls(context=self.ssl_context or ssl.create_default_context())
                if self.smtp.username and self.smtp.password:
                    client.login(self.smtp.username, self.smtp.password)
                client.send_message(message, from_addr=self.mail_from, to_addrs=[to])
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = next(iter(exc.recipients.values()), (0, b""))
            self._refused(code, reply, "the recipient")
        except smtplib.SMTPAuthenticationError as exc:
            raise _Transient(
                f"the SMTP server at {where} refused the login: {exc.smtp_code} "
                f"{_reply_text(exc.smtp_error)}",
                "auth",
                retry=False,
            ) from None
        except smtplib.SMTPHeloError as exc:
            raise _Transient(
                f"the SMTP server at {where} refused our greeting: {exc.smtp_code} "
                f"{_reply_text(exc.smtp_error)}",
                "helo",
                retry=False,
            ) from None
        except smtplib.SMTPNotSupportedError as exc:  # no STARTTLS, AUTH or SMTPUTF8
            raise _Transient(
                f"the SMTP server at {where} does not support what was asked: {exc}",
                "unsupported",
                retry=False,
            ) from None
        except smtplib.SMTPConnectError as exc:
            code = str(exc.smtp_code) if 400 <= exc.smtp_code < 500 else "connect"
            raise _Transient(
                f"the SMTP server at {where} refused the connection: {exc.smtp_code} "
                f"{_reply_text(exc.smtp_error)}",
                code,
            ) from None
        except smtplib.SMTPResponseException as exc:  # sender refused, data refused, HELO
            self._refused(exc.smtp_code, exc.smtp_error, "the message")
        except ssl.SSLError as exc:
            raise _Transient(
                f"TLS with the SMTP server at {where} failed: {exc.__class__.__name__}",
                "tls",
                retry=False,
            ) from None
        except (smtplib.SMTPException, OSError) as exc:  # refused, reset, timed out
            raise _Transient(
                f"the SMTP server at {where} did not answer: {exc.__class__.__name__}",
                "connect",
            ) from None

    def _refused(self, code: int, reply: bytes | str, what: str) -> None:
        text = f"the SMTP server refused {what}: {code} {_reply_text(reply)}"
        if code in _RELAY_POLICY:
            # "530 Must issue a STARTTLS command first", "Authentication required": the
            # relay's configuration, not the recipient's address; no retry cures it now.
            raise _Transient(text, str(code), retry=False)
        if 500 <= code < 600:
            raise SendError(text, str(code), permanent=True)
        raise _Transient(text, str(code) if 400 <= code < 500 else "connect")


class TransportUnavailable(RuntimeError):
    """The configured provider cannot be used by this version."""


def make_transports(settings: Settings) -> tuple[SmsTransport, EmailTransport]:
    """The SMS and email transports the settings call for."""
    sms: SmsTransport = TwilioSms(settings) if settings.twilio else DevPhone()
    email: EmailTransport = SmtpMail(settings) if settings.smtp else DevMailbox()
    return sms, email
