"""A Twilio-compatible HTTP server for tests, local development and benchmarks.

`FakeTwilio` speaks enough of Twilio's REST API (2010-04-01 Messages) for the official
`twilio` SDK to accept its answers exactly as it accepts Twilio's, and it calls the app
back (inbound SMS, status callbacks) signed exactly as Twilio signs.

    with FakeTwilio() as fake:
        client = fake.sdk_client(timeout=5)
        client.messages.create(to="+447700900123", from_="+447700900000", body="hi")
        assert fake.messages[0]["body"] == "hi"

Pointing the official SDK at a base URL (checked against twilio 9.x, and what production
code does with `TWILIO_API_BASE_URL`)::

    from twilio.http.http_client import TwilioHttpClient
    from twilio.rest import Client

    client = Client(account_sid, auth_token, http_client=TwilioHttpClient(timeout=10))
    client.region = None  # TWILIO_REGION / TWILIO_EDGE (environment or arguments) make
    client.edge = None    # ClientBase.get_hostname rewrite the host: 127.0.0.1 -> 127.ie1.0.1
    client.api.base_url = "http://127.0.0.1:8765"  # no trailing path; "/2010-04-01" is added

`client.messages` is `client.api.account.messages`, and every request it makes (create,
fetch, list, and the `next_page_uri` of later pages) is built by the `Api` domain from
`Domain.base_url`, so replacing that one attribute covers them all. `Client(..., http_client=)`
alone does not change the host. requests honours `HTTP_PROXY`/`NO_PROXY` from the
environment; `sdk_client()` switches that off (`session.trust_env = False`) for loopback.

A hung request surfaces from the SDK as `requests.exceptions.ReadTimeout` (a subclass of
`requests.exceptions.Timeout` / `RequestException`, not wrapped in a Twilio exception).

Error answers have Twilio's legacy shape `{"code", "message", "more_info", "status"}`, which
`twilio.base.version.Version.exception` turns into `TwilioRestException` with `.status` the
HTTP status and `.code` the body's `code`.

Run `python -m tests.support.twilio_server --port 8765` to serve it for local development.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import datetime as dt
import email.utils
import ipaddress
import json
import logging
import re
import secrets
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import requests
from twilio.request_validator import RequestValidator

from tests.support.twilio_forms import API_VERSION, inbound_form, num_segments

if TYPE_CHECKING:
    from twilio.rest import Client

__all__ = [
    "API_VERSION",
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_TOKEN",
    "DEFAULT_PHONE_NUMBER",
    "FakeTwilio",
    "main",
    "num_segments",
]

_log = logging.getLogger(__name__)

DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "fedcba9876543210" * 2
DEFAULT_PHONE_NUMBER = "+447700900000"
"""The number inbound messages are addressed to when a test does not say (Ofcom drama range)."""

ERROR_MESSAGES: dict[int, str] = {
    20001: "Invalid parameter",
    20003: "Authenticate",
    20004: "Method not allowed",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    20503: "Service Unavailable",
    21211: "The 'To' number is not a valid phone number.",
    21212: "The 'From' number is not a valid phone number, shortcode, or alphanumeric sender ID.",
    21602: "Message body is required.",
    21603: "A 'From' or 'MessagingServiceSid' parameter is required to send a message.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    30003: "Unreachable destination handset",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
}
"""Twilio's wording for the error codes the fake produces or is commonly asked to inject."""

_DEFAULT_CODES = {401: 20003, 404: 20404, 405: 20004, 429: 20429, 500: 20500, 503: 20503}

_ACCOUNT_SID = re.compile(r"AC[0-9a-f]{32}")
_E164 = re.compile(r"(?:whatsapp:)?\+[1-9]\d{1,14}")
_SHORT_CODE = re.compile(r"\d{3,8}")
_ALPHANUMERIC_ID = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")
_MESSAGES_PATH = re.compile(
    rf"/{API_VERSION}/Accounts/(?P<account>[^/]+)/Messages(?:/(?P<sid>[^/]+))?\.json"
)
_MAX_BODY = 1600
_MAX_PAGE_SIZE = 1000


def _rfc2822(moment: dt.datetime | None) -> str | None:
    return None if moment is None else email.utils.format_datetime(moment.astimezone(dt.UTC))


def _new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _error_body(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


@dataclass(frozen=True)
class _Fault:
    """One queued misbehaviour: answer with an error, or stall before answering."""

    kind: str  # "fail" or "hang"
    method: str | None
    status: int = 0
    code: int | None = None
    message: str = ""
    retry_after: int = 1
    body: str | None = None
    seconds: float = 0.0


class _ApiError(Exception):
    """Raised inside request handling to answer with a Twilio error body."""

    def __init__(self, status: int, code: int, message: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message if message is not None else ERROR_MESSAGES.get(code, "")


class _Dropped(Exception):
    """A stalled request was cut short by stop(): close the connection without answering."""


def _parse_date_filter(value: str) -> dt.date | dt.datetime:
    """A DateSent filter value: `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ` (what the SDK sends)."""
    for fmt in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            parsed = dt.datetime.strptime(value, fmt)
        except ValueError:
            continue
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise _ApiError(400, 20001, f"Invalid DateSent value: {value}") from None


def _date_matches(sent: dt.datetime, op: str, bound: dt.date | dt.datetime) -> bool:
    """Twilio's DateSent filters: `DateSent` (same day), `DateSent<` (<=), `DateSent>` (>=)."""
    left: dt.date | dt.datetime
    if isinstance(bound, dt.datetime):
        left = sent.replace(microsecond=0)
    else:
        left = sent.astimezone(dt.UTC).date()
    if op == "<":
        return left <= bound  # type: ignore[operator]
    if op == ">":
        return left >= bound  # type: ignore[operator]
    return left == bound


class _Server(ThreadingHTTPServer):
    """The HTTP server; handler threads are daemons and stop() never waits on idle sockets."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], fake: FakeTwilio, family: int) -> None:
        self.address_family = family  # type: ignore[assignment]
        self.fake = fake
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (timeout, reset) is not an error worth a traceback."""
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            _log.debug("connection from %s dropped: %s", client_address, exc)
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to FakeTwilio._handle; one request per connection (HTTP/1.0)."""

    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "FakeTwilio/1.0"
    sys_version = ""
    timeout = 30  # bound reads from a client that connects and sends nothing

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        _log.debug("%s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.server.fake._handle(self)

    def do_POST(self) -> None:  # noqa: N802
        self.server.fake._handle(self)

    def do_PUT(self) -> None:  # noqa: N802
        self.server.fake._handle(self)

    def do_DELETE(self) -> None:  # noqa: N802
        self.server.fake._handle(self)


class FakeTwilio:
    """A Twilio Messages API on loopback, with request recording and failure injection.

    Serves `POST/GET /2010-04-01/Accounts/{sid}/Messages.json` and
    `GET .../Messages/{Sid}.json` with HTTP Basic auth (account SID : auth token). All
    recorded state and injected faults are guarded by one lock, so tests may drive it from
    several threads. Start it with `start()` or a `with` block.
    """

    def __init__(
        self,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        phone_number: str = DEFAULT_PHONE_NUMBER,
        messaging_service_sid: str | None = None,
    ) -> None:
        """Configure (not start) the fake.

        `host` must be a loopback address ("localhost" means 127.0.0.1); `port=0` picks a
        free port. `phone_number` is the app's number (the `To` of inbound messages);
        `messaging_service_sid`, when given, is sent as `MessagingServiceSid` in callbacks.
        """
        if not _ACCOUNT_SID.fullmatch(account_sid):
            raise ValueError(f"account_sid must be 'AC' + 32 lowercase hex: {account_sid!r}")
        if host == "localhost":
            host = "127.0.0.1"
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"host must be a loopback IP address: {host!r}") from None
        if not ip.is_loopback:
            raise ValueError(f"FakeTwilio binds loopback only, not {host!r}")
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.host = host
        self.port = port
        self.phone_number = phone_number
        self.messaging_service_sid = messaging_service_sid
        self._family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._bound: tuple[str, int] | None = None
        self._messages: list[dict[str, Any]] = []
        self._requests: list[dict[str, Any]] = []
        self._deliveries: list[dict[str, Any]] = []
        self._faults: list[_Fault] = []
        self._http = requests.Session()
        self._http.trust_env = False  # callbacks go straight to the URL, never via a proxy

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> FakeTwilio:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            raise RuntimeError("FakeTwilio is already running")
        self._stopping.clear()
        server = _Server((self.host, self.port), self, self._family)
        self._server = server
        self._bound = (self.host, server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"FakeTwilio:{self._bound[1]}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; returns promptly, cutting short any handler stalled by hang_next()."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._http.close()

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:{port}`: what to give the SDK as `client.api.base_url`."""
        if self._bound is None:
            raise RuntimeError("FakeTwilio has not been started")
        host, port = self._bound
        if self._family == socket.AF_INET6:
            host = f"[{host}]"
        return f"http://{host}:{port}"

    def sdk_client(self, timeout: float | None = None) -> Client:
        """An official `twilio.rest.Client` pointed at this fake (the module docstring recipe)."""
        from twilio.http.http_client import TwilioHttpClient
        from twilio.rest import Client

        http_client = TwilioHttpClient(timeout=timeout)
        assert http_client.session is not None
        http_client.session.trust_env = False
        client = Client(self.account_sid, self.auth_token, http_client=http_client)
        client.region = None  # type: ignore[assignment]
        client.edge = None  # type: ignore[assignment]
        client.api.base_url = self.base_url
        return client

    # -- recorded state -------------------------------------------------------------------

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Copies of the accepted outbound messages, oldest first.

        Keys: sid, account_sid, to, from, messaging_service_sid, body, status,
        status_callback, validity_period (int or None), media_urls, num_segments,
        error_code, error_message, received_at (aware UTC datetime), updated_at, form.
        """
        with self._lock:
            return [dict(m) for m in self._messages]

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Copies of every API request received: method, path, query, form, headers, status."""
        with self._lock:
            return [dict(r) for r in self._requests]

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        """Copies of the callbacks posted to the app: kind, url, signed_url, params, status_code."""
        with self._lock:
            return [dict(d) for d in self._deliveries]

    def message(self, sid: str) -> dict[str, Any]:
        """A copy of the accepted message `sid`; KeyError if there is none."""
        with self._lock:
            return dict(self._find(sid))

    def reset(self) -> None:
        """Forget recorded messages, requests and deliveries, and drop pending faults."""
        with self._lock:
            self._messages.clear()
            self._requests.clear()
            self._deliveries.clear()
            self._faults.clear()

    def _find(self, sid: str) -> dict[str, Any]:
        for m in self._messages:
            if m["sid"] == sid:
                return m
        raise KeyError(sid)

    # -- failure injection ----------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        code: int | None = None,
        message: str = "",
        times: int = 1,
        *,
        retry_after: int = 1,
        body: str | None = None,
        method: str | None = None,
    ) -> None:
        """Answer the next `times` API requests with a Twilio error instead of serving them.

        `code` defaults to Twilio's generic code for `status` (429 -> 20429, 500 -> 20500,
        503 -> 20503, ...) and `message` to Twilio's wording for `code`. 429 answers carry
        `Retry-After: {retry_after}`. `body` replaces the JSON body verbatim (e.g. an HTML
        gateway page). `method` ("POST", "GET") limits the fault to requests of that method.
        Faults from fail_next() and hang_next() are consumed in the order they were queued.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"status must be a 4xx or 5xx: {status}")
        fault = _Fault(
            kind="fail",
            method=method.upper() if method else None,
            status=status,
            code=code if code is not None else _DEFAULT_CODES.get(status, status),
            message=message,
            retry_after=retry_after,
            body=body,
        )
        with self._lock:
            self._faults.extend([fault] * times)

    def hang_next(self, seconds: float, times: int = 1, *, method: str | None = None) -> None:
        """Stall the next `times` API requests for `seconds` before serving them normally.

        Other requests are served meanwhile; stop() cuts the stall short and drops the
        connection without an answer.
        """
        fault = _Fault(kind="hang", method=method.upper() if method else None, seconds=seconds)
        with self._lock:
            self._faults.extend([fault] * times)

    @property
    def pending_faults(self) -> int:
        """How many queued fail_next()/hang_next() faults no request has consumed yet."""
        with self._lock:
            return len(self._faults)

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            for i, fault in enumerate(self._faults):
                if fault.method is None or fault.method == method:
                    return self._faults.pop(i)
        return None

    # -- HTTP handling --------------------------------------------------------------------

    def _handle(self, handler: _Handler) -> None:
        method = handler.command
        split = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        multi = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
        form = {k: v[-1] for k, v in multi.items()}
        record: dict[str, Any] = {
            "method": method,
            "path": split.path,
            "query": query,
            "form": form,
            "headers": dict(handler.headers.items()),
            "received_at": dt.datetime.now(dt.UTC),
            "status": None,
        }
        with self._lock:
            self._requests.append(record)
        try:
            status, payload, headers = self._dispatch(
                method, split.path, query, form, multi, handler.headers.get("Authorization")
            )
        except _ApiError as err:
            status, headers = err.status, {}
            payload = _error_body(err.status, err.code, err.message)
        except _Dropped:
            handler.close_connection = True
            with self._lock:
                record["status"] = 0
            return
        with self._lock:
            record["status"] = status
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._respond(handler, status, text, headers)

    def _respond(
        self, handler: _Handler, status: int, text: str, headers: Mapping[str, str]
    ) -> None:
        data = text.encode("utf-8")
        try:
            handler.send_response(status)
            if "Content-Type" not in headers:
                handler.send_header("Content-Type", "application/json; charset=utf-8")
            handler.send_header("Content-Length", str(len(data)))
            handler.send_header("Twilio-Request-Id", _new_sid("RQ"))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
        except OSError as exc:  # the client gave up (timeout) before the answer
            _log.debug("could not answer %s: %s", handler.path, exc)

    def _dispatch(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        form: dict[str, str],
        multi: dict[str, list[str]],
        authorization: str | None,
    ) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        self._check_auth(authorization)
        match = _MESSAGES_PATH.fullmatch(path)
        if match is None or match["account"] != self.account_sid:
            raise _ApiError(404, 20404, f"The requested resource {path} was not found")
        fault = self._take_fault(method)
        if fault is not None and fault.kind == "hang":
            if self._stopping.wait(fault.seconds):
                raise _Dropped
        elif fault is not None:
            return self._fault_answer(fault)
        sid = match["sid"]
        if sid is None and method == "POST":
            return 201, self._create(form, multi), {}
        if sid is None and method == "GET":
            return 200, self._list(path, query), {}
        if sid is not None and method == "GET":
            with self._lock:
                try:
                    found = dict(self._find(sid))
                except KeyError:
                    raise _ApiError(
                        404, 20404, f"The requested resource {path} was not found"
                    ) from None
            return 200, self._resource(found), {}
        raise _ApiError(405, 20004)

    def _fault_answer(self, fault: _Fault) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        headers: dict[str, str] = {}
        if fault.status == 429:
            headers["Retry-After"] = str(fault.retry_after)
        if fault.body is not None:
            headers["Content-Type"] = "text/html; charset=utf-8"
            return fault.status, fault.body, headers
        code = fault.code if fault.code is not None else fault.status
        message = fault.message or ERROR_MESSAGES.get(code, "")
        return fault.status, _error_body(fault.status, code, message), headers

    def _check_auth(self, header: str | None) -> None:
        if not header or not header.startswith("Basic "):
            raise _ApiError(401, 20003)
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise _ApiError(401, 20003) from None
        user, _, password = decoded.partition(":")
        if not (
            secrets.compare_digest(user, self.account_sid)
            and secrets.compare_digest(password.encode(), self.auth_token.encode())
        ):
            raise _ApiError(401, 20003)

    def _create(self, form: dict[str, str], multi: dict[str, list[str]]) -> dict[str, Any]:
        to = form.get("To", "").strip()
        sender = form.get("From", "").strip()
        service = form.get("MessagingServiceSid", "").strip()
        body = form.get("Body", "")
        media = [u for u in multi.get("MediaUrl", []) if u]
        if not to:
            raise _ApiError(400, 21604)
        if not _E164.fullmatch(to):
            raise _ApiError(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not sender and not service:
            raise _ApiError(400, 21603)
        if sender and not (
            _E164.fullmatch(sender)
            or _SHORT_CODE.fullmatch(sender)
            or _ALPHANUMERIC_ID.fullmatch(sender)
        ):
            raise _ApiError(400, 21212, f"The 'From' number {sender} is not a valid phone number.")
        if not body and not media and not form.get("ContentSid"):
            raise _ApiError(400, 21602)
        if len(body) > _MAX_BODY:
            raise _ApiError(400, 21617)
        validity = form.get("ValidityPeriod")
        now = dt.datetime.now(dt.UTC)
        message: dict[str, Any] = {
            "sid": _new_sid("SM"),
            "account_sid": self.account_sid,
            "to": to,
            "from": sender or None,
            "messaging_service_sid": service or None,
            "body": body,
            "status": "accepted" if service else "queued",
            "status_callback": form.get("StatusCallback"),
            "validity_period": int(validity) if validity and validity.isdigit() else None,
            "media_urls": media,
            "num_segments": num_segments(body),
            "error_code": None,
            "error_message": None,
            "received_at": now,
            "updated_at": now,
            "form": dict(form),
        }
        with self._lock:
            self._messages.append(message)
        resource = self._resource(message)
        # As created: not sent yet, and a Messaging Service has not picked a sender.
        resource["date_sent"] = None
        if service and not sender:
            resource["num_segments"] = "0"
        return resource

    def _resource(self, m: Mapping[str, Any]) -> dict[str, Any]:
        """Twilio's JSON for a Message resource (the MessageInstance field set)."""
        uri = f"/{API_VERSION}/Accounts/{m['account_sid']}/Messages/{m['sid']}"
        return {
            "account_sid": m["account_sid"],
            "api_version": API_VERSION,
            "body": m["body"],
            "date_created": _rfc2822(m["received_at"]),
            "date_sent": _rfc2822(m["received_at"]),
            "date_updated": _rfc2822(m["updated_at"]),
            "direction": "outbound-api",
            "error_code": m["error_code"],
            "error_message": m["error_message"],
            "from": m["from"],
            "messaging_service_sid": m["messaging_service_sid"],
            "num_media": str(len(m["media_urls"])),
            "num_segments": str(m["num_segments"]),
            "price": None,
            "price_unit": "USD",
            "sid": m["sid"],
            "status": m["status"],
            "subresource_uris": {
                "media": f"{uri}/Media.json",
                "feedback": f"{uri}/Feedback.json",
            },
            "to": m["to"],
            "uri": f"{uri}.json",
        }

    def _list(self, path: str, query: dict[str, str]) -> dict[str, Any]:
        """A page of messages, newest first, filtered like Twilio's Messages list."""
        try:
            page_size = min(max(int(query.get("PageSize", "50")), 1), _MAX_PAGE_SIZE)
            page = max(int(query.get("Page", "0")), 0)
        except ValueError:
            raise _ApiError(400, 20001, "Invalid paging parameter") from None
        names = ("To", "From", "DateSent", "DateSent<", "DateSent>")
        filters = {k: query[k] for k in names if k in query}
        bounds = {
            k[len("DateSent") :]: _parse_date_filter(v)
            for k, v in filters.items()
            if k.startswith("DateSent")
        }
        with self._lock:
            rows = [dict(m) for m in reversed(self._messages)]
        rows = [
            m
            for m in rows
            if ("To" not in filters or m["to"] == filters["To"])
            and ("From" not in filters or m["from"] == filters["From"])
            and all(_date_matches(m["received_at"], op, b) for op, b in bounds.items())
        ]
        start = page * page_size
        chunk = rows[start : start + page_size]

        def page_uri(number: int) -> str:
            params = {**filters, "PageSize": str(page_size), "Page": str(number)}
            return f"{path}?{urlencode(params)}"

        has_next = start + page_size < len(rows)
        return {
            "end": start + max(len(chunk) - 1, 0),
            "first_page_uri": page_uri(0),
            "messages": [self._resource(m) for m in chunk],
            "next_page_uri": page_uri(page + 1) if has_next else None,
            "page": page,
            "page_size": page_size,
            "previous_page_uri": page_uri(page - 1) if page > 0 else None,
            "start": start,
            "uri": page_uri(page),
        }

    # -- calling the app back -------------------------------------------------------------

    def signature(self, url: str, params: Mapping[str, str]) -> str:
        """`X-Twilio-Signature` for a POST of `params` to `url`, computed as Twilio does."""
        return RequestValidator(self.auth_token).compute_signature(url, dict(params))

    def deliver_inbound(
        self,
        url: str,
        from_: str,
        body: str,
        to: str | None = None,
        message_sid: str | None = None,
        extra: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        signed_url: str | None = None,
        timeout: float = 10.0,
    ) -> requests.Response:
        """POST an incoming SMS to the app's webhook `url`, as Twilio does.

        The form carries Twilio's inbound field set; `extra` adds or overrides fields, and
        `headers` adds or overrides headers (e.g. a wrong `X-Twilio-Signature`). The
        signature is computed over `signed_url` (default `url`), so a test can sign the
        public https URL while posting to the app on loopback, as behind a proxy.
        Returns the `requests.Response` (status_code, text, headers).
        """
        sid = message_sid or _new_sid("SM")
        params = inbound_form(sid, self.account_sid, from_, to or self.phone_number, body)
        if self.messaging_service_sid:
            params["MessagingServiceSid"] = self.messaging_service_sid
        params.update(extra or {})
        return self._post("inbound", url, params, headers, signed_url, timeout)

    def deliver_status(
        self,
        url: str,
        message_sid: str,
        status: str,
        error_code: int | None = None,
        to: str | None = None,
        *,
        from_: str | None = None,
        extra: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        signed_url: str | None = None,
        timeout: float = 10.0,
    ) -> requests.Response:
        """POST a message status callback to `url`, as Twilio does, signed like deliver_inbound.

        If `message_sid` is a message the fake accepted, its recorded status and error code
        are updated first (so fetch and list show them) and its To/From/MessagingServiceSid
        fill the form; `to` and `from_` override them.
        """
        with self._lock:
            try:
                known: dict[str, Any] | None = self._find(message_sid)
            except KeyError:
                known = None
            if known is not None:
                known["status"] = status
                known["error_code"] = error_code
                known["error_message"] = (
                    ERROR_MESSAGES.get(error_code) if error_code is not None else None
                )
                known["updated_at"] = dt.datetime.now(dt.UTC)
                known = dict(known)
        params: dict[str, str] = {
            "SmsSid": message_sid,
            "SmsStatus": status,
            "MessageStatus": status,
            "To": to or (known["to"] if known else "") or "",
            "MessageSid": message_sid,
            "AccountSid": self.account_sid,
            "From": from_ or (known["from"] if known else None) or self.phone_number,
            "ApiVersion": API_VERSION,
        }
        service = known["messaging_service_sid"] if known else self.messaging_service_sid
        if service:
            params["MessagingServiceSid"] = service
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        params.update(extra or {})
        return self._post("status", url, params, headers, signed_url, timeout)

    def status_callback_for(
        self, sid: str, status: str, error_code: int | None = None, **kwargs: Any
    ) -> requests.Response:
        """deliver_status() to the StatusCallback URL the message `sid` was created with.

        KeyError if the fake accepted no such message; ValueError if it had no callback.
        """
        with self._lock:
            callback = self._find(sid)["status_callback"]
        if not callback:
            raise ValueError(f"message {sid} was sent without a StatusCallback")
        return self.deliver_status(callback, sid, status, error_code, **kwargs)

    def _post(
        self,
        kind: str,
        url: str,
        params: dict[str, str],
        headers: Mapping[str, str] | None,
        signed_url: str | None,
        timeout: float,
    ) -> requests.Response:
        signed = signed_url or url
        sent_headers = {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            "User-Agent": "TwilioProxy/1.1",
            "Accept": "*/*",
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
            "X-Twilio-Signature": self.signature(signed, params),
        }
        sent_headers.update(headers or {})
        response = self._http.post(
            url, data=params, headers=sent_headers, timeout=timeout, allow_redirects=False
        )
        with self._lock:
            self._deliveries.append(
                {
                    "kind": kind,
                    "url": url,
                    "signed_url": signed,
                    "params": dict(params),
                    "headers": dict(sent_headers),
                    "status_code": response.status_code,
                }
            )
        return response


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a FakeTwilio until interrupted; prints its base URL on the first line."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.twilio_server", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--account-sid", default=DEFAULT_ACCOUNT_SID)
    parser.add_argument("--auth-token", default=DEFAULT_AUTH_TOKEN)
    parser.add_argument("--phone-number", default=DEFAULT_PHONE_NUMBER)
    parser.add_argument("--messaging-service-sid", default=None)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    fake = FakeTwilio(
        args.account_sid,
        args.auth_token,
        args.host,
        args.port,
        phone_number=args.phone_number,
        messaging_service_sid=args.messaging_service_sid,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: done.set())
    with fake:
        print(fake.base_url, flush=True)
        print(
            f"account sid {fake.account_sid}, auth token {fake.auth_token}; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while not done.wait(0.5):
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
