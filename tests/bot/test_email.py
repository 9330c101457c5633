"""Email invitations through a real SMTP server on loopback (aiosmtpd), the unsubscribe page,
and RFC 8058 one-click unsubscribe, asserting what was sent, stored and opted out."""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
import shutil
import socket
import ssl
import subprocess
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select

from bot.outbound import Outbound
from bot.transports import DevMailbox, DevPhone, SendError, SmtpMail, make_transports
from storage.models import Invitation, Message, OptOut
from surveys.invitations import open_wave
from surveys.wording import invitation_email
from tests.support.smtp_server import FakeSmtp
from tests.support.web import csrf_token, make_app

NOW = dt.datetime.now(dt.UTC)
MAIL_FROM = "surveys@carepulse.example.org"
BASE_URL = "http://127.0.0.1:5000"
SELF_REPORT = [("manager_self_report", {"roles": ["manager"]}, "email")]
SELF_360 = [
    ("appraisal_360", {"subject_role": "manager", "raters": {"self": ["manager"]}}, "email")
]


def _fresh(session):
    """End the test's transaction and forget loaded rows, to see what the app committed."""
    session.rollback()
    session.expire_all()


def _count(session, model, *where):
    _fresh(session)
    return session.scalar(select(func.count()).select_from(model).where(*where))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_app(engine, database_url, tmp_path, port: int, **extra):
    smtp = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port), "MAIL_FROM": MAIL_FROM}
    return make_app(database_url, tmp_path, **{"PUBLIC_BASE_URL": BASE_URL, **smtp, **extra})


@pytest.fixture
def smtp():
    """A real SMTP server on a free loopback port."""
    with FakeSmtp() as server:
        yield server


@pytest.fixture
def smtp_app(engine, database_url, tmp_path, smtp):
    """The app configured to send email through `smtp` (and no Twilio)."""
    return _make_app(engine, database_url, tmp_path, smtp.port)


def _settings(app):
    return app.config["CAREPULSE"]


def _outbound(app, **mail) -> Outbound:
    mail.setdefault("base_delay", 0.001)
    settings = _settings(app)
    return Outbound(settings, DevPhone(), SmtpMail(settings, **mail))


def _programme(session, factory, asks=SELF_REPORT, **person):
    home = factory.home("Willow Court")
    values = {"given_name": "Margaret", "family_name": "Okafor"}
    values.update(person)
    manager = factory.person(home, role="manager", **values)
    programme, wave = factory.programme(
        [home], asks, opens=NOW - dt.timedelta(hours=1), closes=NOW + dt.timedelta(days=7)
    )
    open_wave(session, wave, NOW)
    session.commit()
    return programme, wave, manager


def _send(session, outbound: Outbound) -> int:
    sent = outbound.send_pending(session, NOW)
    session.commit()
    return sent


def _parts(message):
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    return text, html


# --- transports -----------------------------------------------------------------------


def test_make_transports_sends_email_through_smtp_when_configured(smtp_app):
    sms, mail = make_transports(_settings(smtp_app))
    assert isinstance(sms, DevPhone) and isinstance(mail, SmtpMail)
    assert mail.name == "smtp" and (mail.attempts, mail.base_delay) == (3, 0.5)


def test_a_manager_invitation_arrives_with_every_header_and_both_parts(
    session, factory, smtp_app, smtp
):
    programme, wave, manager = _programme(session, factory)
    assert _send(session, _outbound(smtp_app)) == 1
    (received,) = smtp.messages
    _fresh(session)
    invitation = session.scalars(select(Invitation)).one()
    stored = session.scalars(select(Message)).one()
    link = f"{BASE_URL}/s/{invitation.token}"
    unsubscribe = f"{BASE_URL}/u/{invitation.token}"
    closing = wave.closes_at.astimezone(ZoneInfo(programme.timezone)).strftime("%A %-d %B %Y")

    assert smtp.envelopes == [(MAIL_FROM, [manager.email])]
    assert received["From"] == MAIL_FROM and received["To"] == manager.email
    assert received["Subject"] == stored.subject
    assert programme.name in received["Subject"] and closing in received["Subject"]
    sent_at = email.utils.parsedate_to_datetime(received["Date"])  # "-0000": UTC
    assert received["Date"].endswith("-0000") and sent_at.tzinfo is None
    sent_at = sent_at.replace(tzinfo=dt.UTC)
    assert abs((sent_at - dt.datetime.now(dt.UTC)).total_seconds()) < 60
    assert re.fullmatch(r"<[^@<>]+@carepulse\.example\.org>", received["Message-ID"])
    assert received["Message-ID"] == stored.provider_id
    assert (
        received["List-Unsubscribe"] == f"<{unsubscribe}>, <mailto:{MAIL_FROM}?subject=unsubscribe>"
    )
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received.get_content_type() == "multipart/alternative"

    text, html = _parts(received)
    assert text.replace("\r\n", "\n") == stored.body
    for part in (text, html):
        assert link in part and unsubscribe in part
        assert "Margaret" in part and programme.name in part and closing in part
        assert "your self-report" in part
        assert "You can stop and come back from the same link until the survey closes" in part
    assert f'<a href="{link}"' in html and "<h1" in html

    assert invitation.status == "sent"
    assert (stored.status, stored.channel, stored.to_address) == ("sent", "email", manager.email)
    assert stored.from_address == MAIL_FROM


def test_a_360_invitation_names_the_manager_it_is_about(session, factory, smtp_app, smtp):
    home = factory.home("Willow Court")
    factory.person(home, role="manager", given_name="Margaret", family_name="Okafor")
    owner = factory.person(home, role="proprietor", given_name="Ravi", family_name="Shah")
    asks = [
        (
            "appraisal_360",
            {"subject_role": "manager", "raters": {"line_manager": ["proprietor"]}},
            "email",
        )
    ]
    _, wave = factory.programme(
        [home], asks, opens=NOW - dt.timedelta(hours=1), closes=NOW + dt.timedelta(days=7)
    )
    open_wave(session, wave, NOW)
    session.commit()
    assert _send(session, _outbound(smtp_app)) == 1
    (received,) = smtp.messages
    assert received["To"] == owner.email
    for part in _parts(received):
        assert "the 360-degree appraisal about Margaret Okafor" in part
        assert "Ravi" in part


def test_html_in_a_name_is_escaped_in_the_html_part(session, factory, smtp_app, smtp):
    _programme(
        session, factory, given_name="<script>alert(1)</script>", family_name='"><img src=x>'
    )
    assert _send(session, _outbound(smtp_app)) == 1
    text, html = _parts(smtp.messages[0])
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>alert(1)</script>" in text  # plain text is not HTML: shown as typed


def test_the_wording_functions_escape_every_value_and_match_the_plain_text():
    text = invitation_email(
        given_name="Jo",
        programme="Leaders & <Carers>",
        instrument_title='How "the" manager leads',
        subject_name="Margaret <b>Okafor</b>",
        closes=dt.datetime(2027, 1, 22, 20, tzinfo=dt.UTC),
        link="https://surveys.example.org/s/abc?x=1&y=2",
        instrument_key="appraisal_360",
        minutes=4,
        unsubscribe="https://surveys.example.org/u/abc",
    )
    assert "Leaders &amp; &lt;Carers&gt;" in text.html and "<Carers>" not in text.html
    assert "Margaret &lt;b&gt;Okafor&lt;/b&gt;" in text.html
    assert 'href="https://surveys.example.org/s/abc?x=1&amp;y=2"' in text.html
    for words in ("about 4 minutes", "Friday 22 January 2027", "/u/abc", "Dear Jo"):
        assert words in text.body and words in text.html
    # without the new keywords it still works as before
    old = invitation_email(
        given_name="Jo",
        programme="P",
        instrument_title="Morale",
        subject_name=None,
        closes=dt.datetime(2027, 1, 22, tzinfo=dt.UTC),
        link="https://x.example/s/t",
    )
    assert 'the survey "Morale"' in old.body and "unsubscribe" not in old.body
    assert "&#34;Morale&#34;" in old.html


class _Spy:
    """Wraps the SMTP transport to see the database as it is at the moment of sending."""

    name = "smtp"

    def __init__(self, inner: SmtpMail, session) -> None:
        self.inner, self.session, self.seen = inner, session, []

    def send_email(self, to, subject, body, html=None, headers=None):
        self.seen.append(
            [(m.status, m.to_address, m.body) for m in self.session.scalars(select(Message))]
        )
        return self.inner.send_email(to, subject, body, html=html, headers=headers)


@pytest.mark.parametrize("stage", ["RCPT", "DATA"])
def test_a_550_fails_the_invitation_with_the_reply_and_is_not_retried(
    session, factory, smtp_app, smtp, stage
):
    _, _, manager = _programme(session, factory)
    smtp.fail_next(550, "5.1.1 <margaret@example.org>: mailbox unavailable", stage=stage)
    settings = _settings(smtp_app)
    spy = _Spy(SmtpMail(settings, base_delay=0.001), session)
    assert _send(session, Outbound(settings, DevPhone(), spy)) == 0
    # the message row was stored, queued, before the SMTP server was contacted
    ((status, to, body),) = spy.seen[0]
    assert (status, to) == ("queued", manager.email) and body
    assert smtp.transactions == 1 and smtp.messages == []
    _fresh(session)
    message = session.scalars(select(Message)).one()
    assert (message.status, message.error_code) == ("failed", "550")
    assert "mailbox unavailable" in message.error_message
    invitation = session.scalars(select(Invitation)).one()
    assert invitation.status == "failed"
    event = invitation.events[-1]
    assert event.status == "failed" and event.detail.startswith("550: ")
    assert "5.1.1 <margaret@example.org>: mailbox unavailable" in event.detail


def test_a_451_once_is_retried_within_the_send_and_delivered_once(session, factory, smtp_app, smtp):
    _programme(session, factory)
    smtp.fail_next(451, "4.7.1 Greylisted, try again", stage="RCPT")
    assert _send(session, _outbound(smtp_app)) == 1
    assert smtp.transactions == 2 and len(smtp.messages) == 1
    _fresh(session)
    message = session.scalars(select(Message)).one()
    assert message.status == "sent" and message.provider_id == smtp.messages[0]["Message-ID"]
    assert session.scalars(select(Invitation)).one().status == "sent"


def test_a_451_at_data_is_retried_too(session, factory, smtp_app, smtp):
    _programme(session, factory)
    smtp.fail_next(452, "4.3.1 Insufficient system storage", stage="DATA")
    assert _send(session, _outbound(smtp_app)) == 1
    assert smtp.transactions == 2 and len(smtp.messages) == 1


def test_a_451_every_time_leaves_the_invitation_pending(session, factory, smtp_app, smtp):
    _programme(session, factory)
    smtp.fail_next(451, "4.3.0 Try again later", times=3)
    delays: list[float] = []
    outbound = _outbound(smtp_app, base_delay=0.01, sleep=delays.append)
    assert _send(session, outbound) == 0
    assert smtp.transactions == 3 and smtp.messages == []
    # exponential backoff with jitter: about 0.01 then about 0.02 (each x0.5 to x1.5)
    assert len(delays) == 2
    assert 0.005 <= delays[0] <= 0.015 and 0.01 <= delays[1] <= 0.03
    _fresh(session)
    message = session.scalars(select(Message)).one()
    assert (message.status, message.error_code) == ("error", "451")
    assert "Try again later" in message.error_message
    invitation = session.scalars(select(Invitation)).one()
    assert invitation.status == "pending"
    # the next run sends it
    assert _send(session, _outbound(smtp_app)) == 1
    assert len(smtp.messages) == 1


def test_the_transport_raises_a_transient_send_error_after_its_attempts(smtp_app, smtp):
    smtp.fail_next(421, "4.7.0 Too many connections", times=2)
    mail = SmtpMail(_settings(smtp_app), attempts=2, base_delay=0.001)
    with pytest.raises(SendError) as caught:
        mail.send_email("someone@example.org", "Hello", "Body")
    assert (caught.value.permanent, caught.value.code) == (False, "421")
    assert smtp.transactions == 2


def test_a_server_that_is_down_is_transient(session, factory, engine, database_url, tmp_path):
    app = _make_app(engine, database_url, tmp_path, _free_port())  # nothing listens there
    _programme(session, factory)
    delays: list[float] = []
    assert _send(session, _outbound(app, sleep=delays.append)) == 0
    assert len(delays) == 2  # three attempts
    _fresh(session)
    message = session.scalars(select(Message)).one()
    assert (message.status, message.error_code) == ("error", "connect")
    assert session.scalars(select(Invitation)).one().status == "pending"


def test_a_server_that_never_answers_times_out(session, factory, engine, database_url, tmp_path):
    with socket.socket() as listener:  # accepts connections (backlog) but never greets
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        app = _make_app(engine, database_url, tmp_path, port)
        mail = SmtpMail(_settings(app), timeout=0.2, attempts=2, base_delay=0.001)
        started = dt.datetime.now(dt.UTC)
        with pytest.raises(SendError) as caught:
            mail.send_email("someone@example.org", "Hello", "Body")
        assert (dt.datetime.now(dt.UTC) - started).total_seconds() < 3
    assert (caught.value.permanent, caught.value.code) == (False, "connect")


def test_a_header_with_a_line_break_is_refused_before_connecting(smtp_app, smtp):
    mail = SmtpMail(_settings(smtp_app))
    with pytest.raises(SendError) as caught:
        mail.send_email("someone@example.org", "Hi\r\nBcc: victim@example.org", "Body")
    assert caught.value.permanent and smtp.transactions == 0


# --- STARTTLS and login ---------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def test_starttls_and_login(session, factory, engine, database_url, tmp_path, certificate, caplog):
    password = "s3cret-Passw0rd-never-logged"
    caplog.set_level(logging.DEBUG)
    with FakeSmtp(tls=certificate, credentials=("mailer", password)) as server:
        app = _make_app(
            engine,
            database_url,
            tmp_path,
            server.port,
            SMTP_STARTTLS="true",
            SMTP_USERNAME="mailer",
            SMTP_PASSWORD=password,
        )
        _programme(session, factory)
        trusted = ssl.create_default_context(cafile=certificate[0])
        assert _send(session, _outbound(app, ssl_context=trusted)) == 1
        assert server.tls_used == [True] and server.logins == ["mailer"]
        assert len(server.messages) == 1

        # a wrong password: transient (an operator must fix it), not retried, not logged
        wrong = _make_app(
            engine,
            database_url,
            tmp_path,
            server.port,
            SMTP_STARTTLS="true",
            SMTP_USERNAME="mailer",
            SMTP_PASSWORD=password + "-wrong",
        )
        mail = SmtpMail(_settings(wrong), ssl_context=trusted, base_delay=0.001)
        with pytest.raises(SendError) as caught:
            mail.send_email("someone@example.org", "Hello", "Body")
        assert (caught.value.permanent, caught.value.code) == (False, "auth")
        assert password not in str(caught.value) and password not in repr(mail)

        # the system's trust store does not know the self-signed certificate
        untrusted = SmtpMail(_settings(app), base_delay=0.001)
        with pytest.raises(SendError) as refused:
            untrusted.send_email("someone@example.org", "Hello", "Body")
        assert (refused.value.permanent, refused.value.code) == (False, "tls")
        assert len(server.messages) == 1
    assert password not in caplog.text


def test_a_server_requiring_starttls_refuses_plain_sessions(
    engine, database_url, tmp_path, certificate
):
    with FakeSmtp(tls=certificate) as server:
        app = _make_app(engine, database_url, tmp_path, server.port, SMTP_STARTTLS="false")
        mail = SmtpMail(_settings(app), base_delay=0.001)
        with pytest.raises(SendError) as caught:
            mail.send_email("someone@example.org", "Hello", "Body")
        assert server.messages == []
    # a relay's policy, not the recipient's address: the invitation must not be failed
    assert caught.value.code == "530" and caught.value.permanent is False
    assert server.transactions == 0


def test_a_path_in_the_token_is_just_not_found(smtp_app):
    assert smtp_app.test_client().get("/u/..%2F..%2Fetc").status_code == 404


# --- the unsubscribe page ---------------------------------------------------------------


def test_unsubscribing_stops_every_later_email(session, factory, smtp_app, smtp):
    _, _, manager = _programme(session, factory, SELF_REPORT + SELF_360)
    first, second = session.scalars(select(Invitation).order_by(Invitation.id)).all()
    outbound = _outbound(smtp_app)
    outbound.send_invitation(session, first, NOW)
    session.commit()
    assert len(smtp.messages) == 1
    token = first.token

    client = smtp_app.test_client()
    page = client.get(f"/u/{token}")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "Stop emails about this programme?" in body and 'method="post"' in body
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert _count(session, OptOut) == 0  # looking is not unsubscribing

    done = client.post(f"/u/{token}", data={"csrf_token": csrf_token(body)})
    assert done.status_code == 200
    assert "You will not get more emails" in done.get_data(as_text=True)
    assert done.headers["Cache-Control"] == "no-store"
    _fresh(session)
    opt = session.scalars(select(OptOut)).one()
    assert (opt.channel, opt.address, opt.keyword, opt.person_id) == (
        "email",
        manager.email,
        "unsubscribe",
        manager.id,
    )
    # both are closed: the one emailed and the one not yet sent
    statuses = [i.status for i in session.scalars(select(Invitation).order_by(Invitation.id))]
    assert statuses == ["opted_out", "opted_out"]

    assert _send(session, _outbound(smtp_app)) == 0
    assert len(smtp.messages) == 1
    # visiting again says it is done
    again = client.get(f"/u/{token}")
    assert "You will not get more emails" in again.get_data(as_text=True)


def test_a_pending_email_invitation_is_not_sent_after_an_opt_out(session, factory, smtp_app, smtp):
    _programme(session, factory)
    token = session.scalars(select(Invitation)).one().token
    session.commit()
    reply = smtp_app.test_client().post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert reply.status_code == 200
    assert _send(session, _outbound(smtp_app)) == 0
    assert smtp.messages == []
    assert _count(session, Message) == 0


@pytest.mark.parametrize(
    "request_body",
    [
        {"data": {"List-Unsubscribe": "One-Click"}},
        {
            "data": "List-Unsubscribe=One-Click",
            "content_type": "application/x-www-form-urlencoded",
        },
    ],
)
def test_one_click_unsubscribe_works_without_a_session(
    session, factory, smtp_app, smtp, request_body
):
    _, _, manager = _programme(session, factory)
    _send(session, _outbound(smtp_app))
    token = session.scalars(select(Invitation)).one().token
    client = smtp_app.test_client(use_cookies=False)
    reply = client.post(f"/u/{token}", **request_body)
    assert reply.status_code == 200
    assert "You will not get more emails" in reply.get_data(as_text=True)
    assert reply.headers["Referrer-Policy"] == "no-referrer"
    _fresh(session)
    opt = session.scalars(select(OptOut)).one()
    assert (opt.channel, opt.address) == ("email", manager.email)
    # a repeated one-click (mail clients retry) is harmless
    assert client.post(f"/u/{token}", **request_body).status_code == 200
    assert _count(session, OptOut) == 1


@pytest.mark.parametrize(
    "form",
    [
        {"csrf_token": "not-the-token"},
        {},
        {"csrf_token": ""},
        {"List-Unsubscribe": "One-Click", "csrf_token": "not-the-token"},
        {"List-Unsubscribe": "one-click"},
        {"List-Unsubscribe": "One-Click", "extra": "1"},
    ],
)
def test_a_bad_csrf_token_gets_400_and_stores_nothing(session, factory, smtp_app, form):
    _programme(session, factory)
    token = session.scalars(select(Invitation)).one().token
    session.commit()
    client = smtp_app.test_client()
    assert client.get(f"/u/{token}").status_code == 200  # the session now has a token
    reply = client.post(f"/u/{token}", data=form)
    assert reply.status_code == 400
    assert "You will not get more emails" not in reply.get_data(as_text=True)
    assert _count(session, OptOut) == 0
    assert session.scalars(select(Invitation)).one().status == "pending"


def test_a_csrf_token_from_another_session_is_refused(session, factory, smtp_app):
    _programme(session, factory)
    token = session.scalars(select(Invitation)).one().token
    session.commit()
    other = smtp_app.test_client()
    stolen = csrf_token(other.get(f"/u/{token}").get_data(as_text=True))
    victim = smtp_app.test_client()
    victim.get(f"/u/{token}")
    assert victim.post(f"/u/{token}", data={"csrf_token": stolen}).status_code == 400
    fresh = smtp_app.test_client()  # no session at all
    assert fresh.post(f"/u/{token}", data={"csrf_token": stolen}).status_code == 400
    assert _count(session, OptOut) == 0


@pytest.mark.parametrize(
    "token", ["not-a-real-token", "x" * 500, "%00", "a%20b", "%F0%9F%98%80", "..", "a.b"]
)
@pytest.mark.parametrize("method", ["get", "post"])
def test_an_unknown_token_gets_404(session, smtp_app, token, method):
    client = smtp_app.test_client()
    data = {"List-Unsubscribe": "One-Click"} if method == "post" else None
    reply = getattr(client, method)(f"/u/{token}", data=data)
    assert reply.status_code == 404
    assert "not recognised" in reply.get_data(as_text=True)
    assert reply.headers["Cache-Control"] == "no-store"
    assert _count(session, OptOut) == 0


def test_a_manager_goes_from_the_email_in_the_inbox_to_a_completed_self_report(
    session, factory, smtp_app, smtp
):
    from storage.models import Answer

    _, _, manager = _programme(session, factory)
    assert _send(session, _outbound(smtp_app)) == 1
    (received,) = smtp.messages
    text, _ = _parts(received)
    link = re.search(r"http://127\.0\.0\.1:5000(/s/[A-Za-z0-9_-]{32})", text).group(1)
    client = smtp_app.test_client()
    start = client.get(link)
    assert start.status_code == 303 and start.headers["Location"].endswith("/survey")
    page = client.get("/survey").get_data(as_text=True)
    assert "How you feel about your work as a manager" in page
    given = {}
    for number in range(1, 16):
        html = client.get(f"/survey/q/{number}").get_data(as_text=True)
        item_id = re.search(r'type="radio" id="[^"]+" name="([a-z_]+)"', html).group(1)
        value = str(1 + number % 5)
        response = client.post(
            f"/survey/q/{number}", data={item_id: value, "csrf_token": csrf_token(html)}
        )
        assert response.status_code == 303, (number, response.status_code)
        given[item_id] = int(value)
    check = client.get("/survey/check").get_data(as_text=True)
    sent = client.post("/survey/check", data={"csrf_token": csrf_token(check)})
    assert sent.status_code == 303
    assert "your answers have been sent" in client.get("/survey/done").get_data(as_text=True)
    _fresh(session)
    stored = {a.item_id: a.value for a in session.scalars(select(Answer))}
    assert stored == given and len(stored) == 15
    invitation = session.scalars(select(Invitation)).one()
    assert (invitation.status, invitation.person_id) == ("completed", manager.id)


def test_the_invitation_gives_the_closing_day_where_the_programme_is(session, factory, app):
    # 23:30 UTC on Wednesday 30 June 2027 is 00:30 on Thursday 1 July in London.
    home = factory.home("Willow Court")
    factory.person(home, role="manager")
    closes = dt.datetime(2027, 6, 30, 23, 30, tzinfo=dt.UTC)
    programme, wave = factory.programme([home], SELF_REPORT, opens=NOW, closes=closes)
    programme.timezone = "Europe/London"
    open_wave(session, wave, NOW)
    outbound = Outbound(_settings(app), DevPhone(), DevMailbox())
    assert outbound.send_pending(session, NOW) == 1
    stored = session.scalars(select(Message)).one()
    assert "Thursday 1 July 2027" in stored.subject and "Thursday 1 July 2027" in stored.body
    assert "30 June" not in stored.body
