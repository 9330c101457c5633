"""FakeTwilio driven through the official twilio SDK, which must take its answers as Twilio's."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from tests.support.twilio_server import (
    DEFAULT_ACCOUNT_SID,
    DEFAULT_AUTH_TOKEN,
    FakeTwilio,
    num_segments,
)

TO = "+447700900123"
FROM = "+447700900000"
SERVICE = "MG" + "a" * 32
SM_SID = re.compile(r"SM[0-9a-f]{32}")


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(messaging_service_sid=SERVICE) as server:
        yield server


def sdk(fake: FakeTwilio, timeout: float = 5.0) -> Client:
    """The recipe from the module docstring, spelled out (not fake.sdk_client())."""
    return sdk_at(fake.base_url, fake.account_sid, fake.auth_token, timeout)


def sdk_at(base_url: str, account_sid: str, auth_token: str, timeout: float = 5.0) -> Client:
    http_client = TwilioHttpClient(timeout=timeout)
    assert http_client.session is not None
    http_client.session.trust_env = False  # a CI HTTP_PROXY must not swallow loopback calls
    client = Client(account_sid, auth_token, http_client=http_client)
    client.region = None  # type: ignore[assignment]
    client.edge = None  # type: ignore[assignment]
    client.api.base_url = base_url
    return client


class _Catcher(BaseHTTPRequestHandler):
    """Records each POST (path, headers, form) and answers with empty TwiML."""

    server: _CatcherServer

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers["Content-Length"])).decode()
        form = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        self.server.seen.append({"path": self.path, "headers": dict(self.headers), "form": form})
        data = b"<Response/>"
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


class _CatcherServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Catcher)
        self.seen: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def app_server() -> Iterator[_CatcherServer]:
    server = _CatcherServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=2)


# -- sending --------------------------------------------------------------------------------


def test_create_through_the_sdk_returns_a_twilio_message(fake: FakeTwilio) -> None:
    client = sdk(fake)
    msg = client.messages.create(
        to=TO,
        from_=FROM,
        body="hi",
        status_callback="https://carepulse.example.org/twilio/status",
        validity_period=600,
    )
    assert SM_SID.fullmatch(msg.sid or "") and len(msg.sid or "") == 34
    assert (msg.to, msg.from_, msg.body) == (TO, FROM, "hi")
    assert msg.account_sid == fake.account_sid
    assert msg.status == "queued"
    assert msg.direction == "outbound-api"
    assert msg.api_version == "2010-04-01"
    assert msg.num_segments == "1" and msg.num_media == "0"
    assert msg.error_code is None and msg.error_message is None and msg.price is None
    assert msg.messaging_service_sid is None
    assert isinstance(msg.date_created, dt.datetime) and msg.date_created.tzinfo is not None
    assert msg.date_sent is None
    assert msg.uri == f"/2010-04-01/Accounts/{fake.account_sid}/Messages/{msg.sid}.json"
    assert set(msg.subresource_uris or {}) == {"media", "feedback"}

    [recorded] = fake.messages
    assert recorded["sid"] == msg.sid
    assert recorded["status_callback"] == "https://carepulse.example.org/twilio/status"
    assert recorded["validity_period"] == 600
    assert (recorded["to"], recorded["from"], recorded["body"]) == (TO, FROM, "hi")
    assert isinstance(recorded["received_at"], dt.datetime)
    [request] = fake.requests
    assert request["method"] == "POST"
    assert request["path"] == f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
    assert request["form"]["ValidityPeriod"] == "600" and request["status"] == 201


def test_messaging_service_send_is_accepted_without_a_sender(fake: FakeTwilio) -> None:
    msg = sdk(fake).messages.create(to=TO, messaging_service_sid=SERVICE, body="hi")
    assert msg.status == "accepted"
    assert msg.messaging_service_sid == SERVICE
    assert msg.from_ is None and msg.num_segments == "0"


def test_region_and_edge_would_rewrite_the_host_so_the_recipe_clears_them(
    fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_REGION", "ie1")
    monkeypatch.setenv("TWILIO_EDGE", "dublin")
    url = f"{fake.base_url}/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
    untouched = Client(fake.account_sid, fake.auth_token)
    assert untouched.get_hostname(url) != url  # 127.0.0.1 becomes 127.dublin.ie1.0.1
    client = sdk(fake)
    assert client.get_hostname(url) == url
    assert client.messages.create(to=TO, from_=FROM, body="hi").status == "queued"
    assert fake.sdk_client().messages.list(to=TO)


def test_wrong_auth_token_is_a_20003(fake: FakeTwilio) -> None:
    client = sdk_at(fake.base_url, fake.account_sid, "not-the-token")
    with pytest.raises(TwilioRestException) as info:
        client.messages.create(to=TO, from_=FROM, body="hi")
    assert (info.value.status, info.value.code) == (401, 20003)
    assert fake.messages == []


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"to": "", "from_": FROM, "body": "hi"}, 21604),
        ({"to": "07700 900123", "from_": FROM, "body": "hi"}, 21211),
        ({"to": TO, "body": "hi"}, 21603),
        ({"to": TO, "from_": FROM}, 21602),
        ({"to": TO, "from_": FROM, "body": "x" * 1601}, 21617),
    ],
)
def test_validation_errors_like_twilio(fake: FakeTwilio, kwargs: dict[str, str], code: int) -> None:
    with pytest.raises(TwilioRestException) as info:
        sdk(fake).messages.create(**kwargs)
    assert (info.value.status, info.value.code) == (400, code)
    assert fake.messages == []


@pytest.mark.parametrize(
    ("status", "code", "expected_code"),
    [
        (429, 20429, 20429),
        (500, None, 20500),
        (503, None, 20503),
        (400, 21211, 21211),
        (400, 21610, 21610),
        (400, 21614, 21614),
        (400, 30003, 30003),
    ],
)
def test_injected_errors_surface_as_twilio_rest_exceptions(
    fake: FakeTwilio, status: int, code: int | None, expected_code: int
) -> None:
    client = sdk(fake)
    fake.fail_next(status, code)
    with pytest.raises(TwilioRestException) as info:
        client.messages.create(to=TO, from_=FROM, body="hi")
    assert (info.value.status, info.value.code) == (status, expected_code)
    assert fake.messages == []
    # Consumed: the next send goes through.
    assert client.messages.create(to=TO, from_=FROM, body="hi").status == "queued"


def test_error_body_shape_and_retry_after(fake: FakeTwilio) -> None:
    fake.fail_next(429, 20429, retry_after=7)
    fake.fail_next(400, 21610)
    url = f"{fake.base_url}/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
    auth = (fake.account_sid, fake.auth_token)
    form = {"To": TO, "From": FROM, "Body": "hi"}
    http = requests.Session()
    http.trust_env = False
    first = http.post(url, data=form, auth=auth, timeout=5)
    assert first.status_code == 429 and first.headers["Retry-After"] == "7"
    second = http.post(url, data=form, auth=auth, timeout=5)
    http.close()
    assert second.json() == {
        "code": 21610,
        "message": "Attempt to send to unsubscribed recipient",
        "more_info": "https://www.twilio.com/docs/errors/21610",
        "status": 400,
    }
    assert "Retry-After" not in second.headers


def test_faults_are_consumed_in_order_and_can_target_a_method(fake: FakeTwilio) -> None:
    client = sdk(fake)
    fake.fail_next(503, times=2)
    fake.fail_next(400, 21614, method="POST")
    codes = []
    for _ in range(3):
        with pytest.raises(TwilioRestException) as info:
            client.messages.create(to=TO, from_=FROM, body="hi")
        codes.append(info.value.code)
    assert codes == [20503, 20503, 21614]
    fake.fail_next(500, method="POST")
    assert client.messages.list() == []  # a GET does not consume a POST fault
    assert fake.pending_faults == 1


def test_non_json_gateway_error(fake: FakeTwilio) -> None:
    fake.fail_next(502, body="<html>Bad Gateway</html>")
    with pytest.raises(TwilioRestException) as info:
        sdk(fake).messages.create(to=TO, from_=FROM, body="hi")
    assert (info.value.status, info.value.code) == (502, 502)


# -- hanging --------------------------------------------------------------------------------


def test_a_hang_longer_than_the_client_timeout_raises_read_timeout(fake: FakeTwilio) -> None:
    client = sdk(fake, timeout=0.5)
    fake.hang_next(5)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.messages.create(to=TO, from_=FROM, body="hi")
    assert time.monotonic() - started < 1.0
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 0.5
    assert fake.messages == []


def test_serves_other_requests_while_one_hangs_and_stops_promptly(fake: FakeTwilio) -> None:
    fake.hang_next(10)
    outcome: list[BaseException | str] = []

    def stalled() -> None:
        try:
            outcome.append(sdk(fake).messages.create(to=TO, from_=FROM, body="slow").sid or "")
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            outcome.append(exc)

    thread = threading.Thread(target=stalled)
    thread.start()
    deadline = time.monotonic() + 2
    while fake.pending_faults and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.pending_faults == 0
    assert sdk(fake).messages.create(to=TO, from_=FROM, body="fast").status == "queued"
    started = time.monotonic()
    fake.stop()
    thread.join(timeout=2)
    assert time.monotonic() - started < 1.0
    assert not thread.is_alive()
    [result] = outcome
    assert isinstance(result, requests.exceptions.ConnectionError)
    assert [m["body"] for m in fake.messages] == ["fast"]


# -- reading back ---------------------------------------------------------------------------


def test_list_filters_and_pages_like_twilio(fake: FakeTwilio) -> None:
    client = sdk(fake)
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    sids = [
        client.messages.create(to=to, from_=FROM, body=str(i)).sid
        for i, to in enumerate([TO, "+447700900456", TO])
    ]
    mine = client.messages.list(to=TO, date_sent_after=before)
    assert [m.sid for m in mine] == [sids[2], sids[0]]  # newest first
    assert all(isinstance(m.date_sent, dt.datetime) for m in mine)
    assert client.messages.list(to=TO, date_sent_after=before + dt.timedelta(hours=1)) == []
    assert len(client.messages.list(date_sent_before=before + dt.timedelta(hours=1))) == 3

    paged = client.messages.list(page_size=2)
    assert sorted(m.sid or "" for m in paged) == sorted(s or "" for s in sids)
    gets = [r for r in fake.requests if r["method"] == "GET"]
    assert [r["query"].get("Page") for r in gets[-2:]] == [None, "1"]
    assert gets[0]["query"]["To"] == TO and "DateSent>" in gets[0]["query"]


def test_fetch_one_and_unknown(fake: FakeTwilio) -> None:
    client = sdk(fake)
    sid = client.messages.create(to=TO, from_=FROM, body="hi").sid
    fetched = client.messages(sid).fetch()
    assert (fetched.sid, fetched.body, fetched.status) == (sid, "hi", "queued")
    with pytest.raises(TwilioRestException) as info:
        client.messages("SM" + "0" * 32).fetch()
    assert (info.value.status, info.value.code) == (404, 20404)


# -- calling the app back -------------------------------------------------------------------


def test_deliver_inbound_is_signed_like_twilio(
    fake: FakeTwilio, app_server: _CatcherServer
) -> None:
    url = f"{app_server.url}/twilio/inbound"
    response = fake.deliver_inbound(url, "+447700900999", "YES", extra={"OptOutType": "START"})
    assert response.status_code == 200 and response.text == "<Response/>"
    [seen] = app_server.seen
    form, signature = seen["form"], seen["headers"]["X-Twilio-Signature"]
    assert seen["headers"]["Content-Type"].startswith("application/x-www-form-urlencoded")
    assert form["From"] == "+447700900999" and form["To"] == fake.phone_number
    assert form["Body"] == "YES" and form["OptOutType"] == "START"
    assert form["MessageSid"] == form["SmsSid"] == form["SmsMessageSid"]
    assert SM_SID.fullmatch(form["MessageSid"])
    assert form["AccountSid"] == fake.account_sid and form["MessagingServiceSid"] == SERVICE
    assert (form["NumMedia"], form["NumSegments"], form["SmsStatus"]) == ("0", "1", "received")
    assert form["ApiVersion"] == "2010-04-01"
    assert form["FromCountry"] == form["ToCountry"] == "GB"
    validator = RequestValidator(fake.auth_token)
    assert validator.validate(url, form, signature)
    assert not validator.validate(f"{app_server.url}/twilio/other", form, signature)
    assert not RequestValidator("another-token").validate(url, form, signature)
    assert fake.deliveries[0]["kind"] == "inbound"


def test_deliver_inbound_behind_a_proxy_signs_the_public_url(
    fake: FakeTwilio, app_server: _CatcherServer
) -> None:
    public = "https://carepulse.example.org/twilio/inbound"
    local = f"{app_server.url}/twilio/inbound"
    fake.deliver_inbound(local, "+447700900999", "STOP", signed_url=public)
    [seen] = app_server.seen
    validator = RequestValidator(fake.auth_token)
    signature = seen["headers"]["X-Twilio-Signature"]
    assert validator.validate(public, seen["form"], signature)
    assert not validator.validate(local, seen["form"], signature)


def test_deliver_status_is_signed_and_updates_the_message(
    fake: FakeTwilio, app_server: _CatcherServer
) -> None:
    callback = f"{app_server.url}/twilio/status"
    client = sdk(fake)
    sid = client.messages.create(to=TO, from_=FROM, body="hi", status_callback=callback).sid
    assert sid is not None
    fake.deliver_status(callback, sid, "undelivered", error_code=30003)
    [seen] = app_server.seen
    form = seen["form"]
    assert form["MessageSid"] == form["SmsSid"] == sid
    assert form["MessageStatus"] == form["SmsStatus"] == "undelivered"
    assert (form["ErrorCode"], form["To"], form["From"]) == ("30003", TO, FROM)
    assert (form["AccountSid"], form["ApiVersion"]) == (fake.account_sid, "2010-04-01")
    validator = RequestValidator(fake.auth_token)
    assert validator.validate(callback, form, seen["headers"]["X-Twilio-Signature"])
    assert not validator.validate(
        "https://carepulse.example.org/twilio/status", form, seen["headers"]["X-Twilio-Signature"]
    )
    fetched = client.messages(sid).fetch()
    assert (fetched.status, fetched.error_code) == ("undelivered", 30003)

    fake.status_callback_for(sid, "delivered")
    assert app_server.seen[1]["path"] == "/twilio/status"
    assert app_server.seen[1]["form"]["MessageStatus"] == "delivered"
    assert "ErrorCode" not in app_server.seen[1]["form"]


def test_status_callback_for_without_a_callback(fake: FakeTwilio) -> None:
    sid = sdk(fake).messages.create(to=TO, from_=FROM, body="hi").sid
    with pytest.raises(ValueError):
        fake.status_callback_for(sid or "", "delivered")
    with pytest.raises(KeyError):
        fake.status_callback_for("SM" + "0" * 32, "delivered")


# -- odds and ends --------------------------------------------------------------------------


def test_binds_loopback_only_and_checks_the_account_sid() -> None:
    with pytest.raises(ValueError):
        FakeTwilio(host="0.0.0.0")
    with pytest.raises(ValueError):
        FakeTwilio(account_sid="ACnope")
    fake = FakeTwilio(host="localhost")
    with pytest.raises(RuntimeError):
        _ = fake.base_url
    with fake:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", fake.base_url)
    fake.stop()  # idempotent


def test_num_segments() -> None:
    assert num_segments("a" * 160) == 1
    assert num_segments("a" * 161) == 2
    assert num_segments("€" * 80) == 1  # extension characters count double
    assert num_segments("é" * 160) == 1  # in the GSM-7 basic set
    assert num_segments("ê" * 70) == 1  # not in GSM-7: UCS-2
    assert num_segments("ê" * 71) == 2


def test_command_line_entry_point_serves() -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.twilio_server", "--port", "0"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url)
        client = sdk_at(base_url, DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN)
        assert client.messages.create(to=TO, from_=FROM, body="hi").status == "queued"
    finally:
        proc.terminate()
        proc.wait(timeout=5)
