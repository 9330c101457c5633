"""A real SMTP server on loopback for tests: aiosmtpd, recording what it is sent.

    with FakeSmtp() as smtp:
        smtp.fail_next(451, "4.3.0 Try again later")          # the next RCPT gets 451
        ... send to 127.0.0.1:smtp.port ...
        assert smtp.messages[0]["Subject"] == "..."

`fail_next(code, message, stage="RCPT"|"DATA", times=1)` makes the next `times` RCPT (or
DATA) commands answer `code message` instead of accepting; faults are used in order.
`messages` holds every accepted message parsed with `email.policy.default` (so
`get_body(("html",))` works); `transactions` counts every MAIL FROM seen, accepted or not.

With `tls=(certfile, keyfile)` the server offers STARTTLS and refuses everything else
until it is used (aiosmtpd's `require_starttls`); with `credentials=(user, password)` it
also requires AUTH (offered only over TLS) and checks them.
"""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class _Fault:
    stage: str
    code: int
    message: str
    times: int


class _Handler:
    def __init__(self, fake: FakeSmtp) -> None:
        self.fake = fake

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        with self.fake._lock:
            self.fake.transactions += 1
            self.fake.tls_used.append(session.ssl is not None)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        fault = self.fake._take_fault("RCPT")
        with self.fake._lock:
            self.fake.recipients.append(address)
        if fault is not None:
            return f"{fault.code} {fault.message}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        fault = self.fake._take_fault("DATA")
        if fault is not None:
            return f"{fault.code} {fault.message}"
        content = envelope.original_content or envelope.content
        raw = content if isinstance(content, bytes) else content.encode()
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        with self.fake._lock:
            self.fake.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.fake._messages.append(parsed)  # type: ignore[arg-type]
        return "250 Message accepted for delivery"


class _Controller(Controller):
    """A Controller that may listen on port 0: it learns its port before the first use."""

    def _trigger_server(self) -> None:
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class FakeSmtp:
    """An SMTP server on 127.0.0.1 that records messages and answers faults on demand."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: tuple[str, str] | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.host = host
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.recipients: list[str] = []
        self.transactions = 0
        self.tls_used: list[bool] = []
        self.logins: list[str] = []
        self.credentials = credentials
        kwargs: dict[str, Any] = {}
        if tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            kwargs.update(tls_context=context, require_starttls=True)
        if credentials:
            kwargs.update(authenticator=self._authenticate, auth_required=True)
        self._controller = _Controller(_Handler(self), hostname=host, port=port, **kwargs)

    @property
    def port(self) -> int:
        return self._controller.port

    @property
    def messages(self) -> list[EmailMessage]:
        with self._lock:
            return list(self._messages)

    def start(self) -> FakeSmtp:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def __enter__(self) -> FakeSmtp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail_next(self, code: int, message: str, stage: str = "RCPT", times: int = 1) -> None:
        """Answer the next `times` `stage` commands (RCPT or DATA) with `code message`."""
        stage = stage.upper()
        if stage not in ("RCPT", "DATA"):
            raise ValueError("stage must be RCPT or DATA")
        with self._lock:
            self._faults.append(_Fault(stage, code, message, times))

    def _take_fault(self, stage: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.stage == stage:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.credentials is not None
            and (auth_data.login.decode(), auth_data.password.decode()) == self.credentials
        )
        if ok:
            with self._lock:
                self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)
