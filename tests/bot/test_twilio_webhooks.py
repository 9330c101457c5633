"""Whole SMS conversations through the official Twilio SDK, a Twilio-compatible server on
loopback, and the signed webhooks, asserting what was stored, sent and replied."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import requests
from sqlalchemy import func, select

from bot.outbound import Outbound
from bot.transports import DevMailbox, TwilioSms
from storage.models import Answer, Invitation, Message, OptOut
from surveys.invitations import open_wave


def _fresh(session):
    """End the test's transaction and forget loaded rows, to see what the app committed."""
    session.rollback()
    session.expire_all()


STAFF = ["deputy_manager", "nurse", "senior_care_worker", "care_worker"]
NOW = dt.datetime.now(dt.UTC)


def _count(session, model, *where):
    _fresh(session)
    return session.scalar(select(func.count()).select_from(model).where(*where))


def _programme(session, factory, asks, people=1, **person):
    home = factory.home("Willow Court")
    workers = [factory.person(home, **person) for _ in range(people)]
    programme, wave = factory.programme(
        [home], asks, opens=NOW - dt.timedelta(hours=1), closes=NOW + dt.timedelta(days=7)
    )
    programme.settings = {
        "contact": "020 7946 0123",
        "signposts": [
            {
                "id": "low",
                "instrument": "staff_morale",
                "item": "morale",
                "values": [1],
                "message": "Thank you for telling us. Samaritans: 116 123.",
            }
        ],
    }
    open_wave(session, wave, NOW)
    session.commit()
    return wave, workers


def _outbound(live, timeout=5.0):
    return Outbound(live.settings(), TwilioSms(live.settings(), timeout=timeout), DevMailbox())


MORALE = [("staff_morale", {"roles": STAFF}, "sms")]


def _send(session, live, timeout=5.0):
    sent = _outbound(live, timeout).send_pending(session, NOW)
    session.commit()
    return sent


def test_a_whole_morale_conversation(session, factory, live_twilio_app, twilio_fake):
    _, (worker,) = _programme(session, factory, MORALE, given_name="Amara")
    assert _send(session, live_twilio_app) == 1
    (sent,) = twilio_fake.messages
    assert sent["to"] == worker.mobile
    assert "Amara" in sent["body"] and "Reply 1-5" in sent["body"]
    assert sent["status_callback"] == f"{live_twilio_app.url}/twilio/status"
    assert int(sent["validity_period"]) == 1800
    stored = session.scalars(select(Message)).one()
    assert stored.provider_id == sent["sid"] and len(stored.provider_id) == 34

    reply = twilio_fake.deliver_inbound(
        f"{live_twilio_app.url}/twilio/sms", worker.mobile, " Four. "
    )
    assert reply.status_code == 200
    assert "<Message>" in reply.text and "Thank you" in reply.text
    _fresh(session)
    answer = session.scalars(select(Answer)).one()
    assert (answer.item_id, answer.value, answer.channel) == ("morale", 4, "sms")
    invitation = session.scalars(select(Invitation)).one()
    assert invitation.status == "completed"


def test_garbled_replies_are_reasked_then_the_item_is_left(
    session, factory, live_twilio_app, twilio_fake
):
    _, (worker,) = _programme(session, factory, MORALE)
    _send(session, live_twilio_app)
    url = f"{live_twilio_app.url}/twilio/sms"
    first = twilio_fake.deliver_inbound(url, worker.mobile, "3 or 4")
    assert first.status_code == 200 and "3 or 4" in first.text.replace("3 or 4?", "3 or 4")
    assert _count(session, Answer) == 0
    second = twilio_fake.deliver_inbound(url, worker.mobile, "no idea")
    assert second.status_code == 200
    _fresh(session)
    answer = session.scalars(select(Answer)).one()
    assert answer.value is None  # left unanswered after two tries
    assert session.scalars(select(Invitation)).one().status == "completed"


def test_signpost_is_sent_after_a_low_answer(session, factory, live_twilio_app, twilio_fake):
    _, (worker,) = _programme(session, factory, MORALE)
    _send(session, live_twilio_app)
    reply = twilio_fake.deliver_inbound(f"{live_twilio_app.url}/twilio/sms", worker.mobile, "1")
    assert "Samaritans: 116 123" in reply.text
    assert reply.text.count("<Message>") == 2


@pytest.mark.parametrize("forgery", ["missing", "wrong_token", "other_url", "tampered"])
def test_forged_webhooks_get_403_and_store_nothing(
    session, factory, live_twilio_app, twilio_fake, forgery
):
    _, (worker,) = _programme(session, factory, MORALE)
    _send(session, live_twilio_app)
    before = _count(session, Message)
    url = f"{live_twilio_app.url}/twilio/sms"
    form = {
        "MessageSid": "SM" + "a" * 32,
        "From": worker.mobile,
        "To": "+447700900999",
        "Body": "5",
        "AccountSid": twilio_fake.account_sid,
    }
    headers = {}
    if forgery == "wrong_token":
        from twilio.request_validator import RequestValidator

        headers["X-Twilio-Signature"] = RequestValidator("not-our-token").compute_signature(
            url, form
        )
    elif forgery == "other_url":
        headers["X-Twilio-Signature"] = twilio_fake.signature(
            "https://evil.example/twilio/sms", form
        )
    elif forgery == "tampered":
        headers["X-Twilio-Signature"] = twilio_fake.signature(url, form)
        form = {**form, "Body": "1"}
    response = requests.post(url, data=form, headers=headers, timeout=5)
    assert response.status_code == 403
    assert _count(session, Message) == before
    assert _count(session, Answer) == 0


@pytest.mark.app_config({"PUBLIC_BASE_URL": "https://surveys.example.org"})
def test_signature_over_the_public_url_behind_a_proxy(
    session, factory, live_twilio_app, twilio_fake
):
    _, (worker,) = _programme(session, factory, MORALE)
    _send(session, live_twilio_app)
    url = f"{live_twilio_app.url}/twilio/sms"
    ok = twilio_fake.deliver_inbound(
        url, worker.mobile, "5", signed_url="https://surveys.example.org/twilio/sms"
    )
    assert ok.status_code == 200
    wrong = twilio_fake.deliver_inbound(url, worker.mobile, "5", signed_url=url)
    assert wrong.status_code == 403


@pytest.mark.app_config({"PUBLIC_BASE_URL": "https://wrong.example.org", "TRUSTED_PROXIES": "1"})
def test_trusted_proxy_headers_rebuild_the_signed_url(
    session, factory, live_twilio_app, twilio_fake
):
    _, (worker,) = _programme(session, factory, MORALE)
    _send(session, live_twilio_app)
    url = f"{live_twilio_app.url}/twilio/sms"
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "surveys.example.org"}
    ok = twilio_fake.deliver_inbound(
        url,
        worker.mobile,
        "5",
        headers=headers,
        signed_url="https://surveys.example.org/twilio/sms",
    )
    assert ok.status_code == 200


def test_a_retried_webhook_stores_one_answer_and_one_reply(
    session, factory, live_twilio_app, twilio_fake
):
    _, (worker,) = _programme(session, factory, MORALE)
    _send(session, live_twilio_app)
    url = f"{live_twilio_app.url}/twilio/sms"
    sid = "SM" + "b" * 32
    first = twilio_fake.deliver_inbound(url, worker.mobile, "3", message_sid=sid)
    again = twilio_fake.deliver_inbound(url, worker.mobile, "3", message_sid=sid)
    assert first.status_code == again.status_code == 200
    assert "<Message>" in first.text and "<Message>" not in again.text
    assert _count(session, Answer) == 1
    assert _count(session, Message, Message.direction == "in") == 1
    assert _count(session, Message, Message.direction == "out") == 2  # question + thanks


def test_two_copies_at_once_store_one_answer(session, factory, live_twilio_app, twilio_fake):
    _, (worker,) = _programme(session, factory, MORALE)
    _send(session, live_twilio_app)
    url = f"{live_twilio_app.url}/twilio/sms"
    sid = "SM" + "c" * 32
    results = []
    barrier = threading.Barrier(4)

    def post():
        barrier.wait()
        results.append(twilio_fake.deliver_inbound(url, worker.mobile, "2", message_sid=sid))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(results) == 4
    assert {r.status_code for r in results} <= {200, 503}
    assert sum("<Message>" in r.text for r in results) == 1
    assert _count(session, Answer) == 1
    assert _count(session, Message, Message.direction == "in") == 1


@pytest.mark.parametrize(
    "word", ["STOP", "stop", " Stop ", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "quit."]
)
def test_every_stop_keyword_opts_out_and_nothing_more_is_sent(
    session, factory, live_twilio_app, twilio_fake, word
):
    wave, (worker, other) = _programme(session, factory, MORALE, people=2)
    _send(session, live_twilio_app)
    assert len(twilio_fake.messages) == 2
    reply = twilio_fake.deliver_inbound(f"{live_twilio_app.url}/twilio/sms", worker.mobile, word)
    assert reply.status_code == 200
    assert "<Message>" not in reply.text  # Twilio confirms STOP itself
    _fresh(session)
    opt = session.scalars(select(OptOut)).one()
    assert (opt.channel, opt.address, opt.revoked_at) == ("sms", worker.mobile, None)
    mine = session.scalars(select(Invitation).where(Invitation.person_id == worker.id)).one()
    assert mine.status == "opted_out"
    # a new survey in the same wave: the opted-out number is not texted
    from storage.models import WaveInstrument
    from surveys.catalogue import ensure_version
    from surveys.instruments import load_library

    wave = session.merge(wave)
    wave.instruments.append(
        WaveInstrument(
            instrument_version=ensure_version(session, load_library()["appraisal_360"]),
            audience={"roles": STAFF},
            channel="sms",
            sms_mode="link",
        )
    )
    open_wave(session, wave, NOW)
    session.commit()
    _send(session, live_twilio_app)
    assert [m["to"] for m in twilio_fake.messages].count(worker.mobile) == 1
    assert [m["to"] for m in twilio_fake.messages].count(other.mobile) == 2
    # and replies after STOP get no answer
    later = twilio_fake.deliver_inbound(f"{live_twilio_app.url}/twilio/sms", worker.mobile, "4")
    assert "<Message>" not in later.text
    assert _count(session, Answer) == 0


@pytest.mark.parametrize("word", ["START", "yes", "UNSTOP"])
def test_start_keywords_opt_back_in(session, factory, live_twilio_app, twilio_fake, word):
    _, (worker,) = _programme(session, factory, MORALE)
    url = f"{live_twilio_app.url}/twilio/sms"
    twilio_fake.deliver_inbound(url, worker.mobile, "STOP")
    twilio_fake.deliver_inbound(url, worker.mobile, word)
    _fresh(session)
    assert session.scalars(select(OptOut)).one().revoked_at is not None


@pytest.mark.parametrize("word", ["HELP", "info", " Help! "])
def test_help_says_who_why_and_how_to_stop(session, factory, live_twilio_app, twilio_fake, word):
    _, (worker,) = _programme(session, factory, MORALE)
    _send(session, live_twilio_app)
    reply = twilio_fake.deliver_inbound(f"{live_twilio_app.url}/twilio/sms", worker.mobile, word)
    assert "STOP" in reply.text and "020 7946 0123" in reply.text
    assert _count(session, Answer) == 0


def test_unknown_numbers_get_a_polite_reply_and_nothing_else(
    session, factory, live_twilio_app, twilio_fake
):
    _programme(session, factory, MORALE)
    reply = twilio_fake.deliver_inbound(
        f"{live_twilio_app.url}/twilio/sms", "+447700900555", "hello"
    )
    assert reply.status_code == 200 and "<Message>" in reply.text
    _fresh(session)
    inbound = session.scalars(select(Message).where(Message.direction == "in")).one()
    assert inbound.person_id is None
    assert _count(session, Answer) == 0 and _count(session, OptOut) == 0


def test_two_open_surveys_are_taken_one_at_a_time(session, factory, live_twilio_app, twilio_fake):
    asks = MORALE + [("appraisal_360", {"roles": STAFF}, "sms")]
    wave, (worker,) = _programme(session, factory, asks)
    for item in wave.instruments:
        item.sms_mode = "conversation"
    session.commit()
    assert _send(session, live_twilio_app) == 1  # the second waits its turn
    assert "survey 1 of 2" in twilio_fake.messages[0]["body"]
    reply = twilio_fake.deliver_inbound(f"{live_twilio_app.url}/twilio/sms", worker.mobile, "5")
    assert "Q1/11" in reply.text or "manager" in reply.text.lower()
    _fresh(session)
    statuses = sorted(i.status for i in session.scalars(select(Invitation)))
    assert statuses == ["completed", "sent"]


def test_out_of_order_and_repeated_status_callbacks(session, factory, live_twilio_app, twilio_fake):
    _programme(session, factory, MORALE)
    _send(session, live_twilio_app)
    sid = twilio_fake.messages[0]["sid"]
    url = f"{live_twilio_app.url}/twilio/status"
    for status in ("delivered", "sent", "queued", "delivered"):
        assert twilio_fake.deliver_status(url, sid, status).status_code == 204
    _fresh(session)
    message = session.scalars(select(Message)).one()
    assert message.status == "delivered"
    invitation = session.scalars(select(Invitation)).one()
    assert invitation.status == "delivered"
    assert [e.status for e in invitation.events] == ["pending", "sent", "delivered"]


def test_failed_delivery_marks_the_invitation_with_the_code(
    session, factory, live_twilio_app, twilio_fake
):
    _programme(session, factory, MORALE)
    _send(session, live_twilio_app)
    sid = twilio_fake.messages[0]["sid"]
    twilio_fake.deliver_status(
        f"{live_twilio_app.url}/twilio/status", sid, "undelivered", error_code=30003
    )
    twilio_fake.deliver_status(f"{live_twilio_app.url}/twilio/status", sid, "delivered")
    _fresh(session)
    message = session.scalars(select(Message)).one()
    assert (message.status, message.error_code) == ("undelivered", "30003")
    assert session.scalars(select(Invitation)).one().status == "failed"


def test_status_for_an_unknown_message_is_accepted_and_ignored(
    live_twilio_app, twilio_fake, session
):
    reply = twilio_fake.deliver_status(
        f"{live_twilio_app.url}/twilio/status", "SM" + "d" * 32, "delivered"
    )
    assert reply.status_code == 204
    assert _count(session, Message) == 0


@pytest.mark.parametrize(
    ("status", "code", "message_status", "invitation_status", "opted_out"),
    [
        (429, 20429, "error", "pending", False),
        (500, None, "error", "pending", False),
        (503, None, "error", "pending", False),
        (400, 21211, "failed", "failed", False),
        (400, 21614, "failed", "failed", False),
        (400, 30003, "failed", "failed", False),
        (400, 21610, "failed", "opted_out", True),
    ],
)
def test_twilio_errors_on_send(
    session,
    factory,
    live_twilio_app,
    twilio_fake,
    status,
    code,
    message_status,
    invitation_status,
    opted_out,
):
    _programme(session, factory, MORALE)
    twilio_fake.fail_next(status, code)
    assert _send(session, live_twilio_app) == 0
    _fresh(session)
    message = session.scalars(select(Message)).one()
    assert message.status == message_status
    # Twilio's own code, or for a bare 5xx its 20xxx code for that status
    assert message.error_code in ({str(code)} if code else {str(status), f"20{status}"})
    assert session.scalars(select(Invitation)).one().status == invitation_status
    assert (_count(session, OptOut) == 1) is opted_out
    if invitation_status == "pending":  # transient: the next run sends it
        assert _send(session, live_twilio_app) == 1


def test_a_send_that_hangs_times_out_and_is_retried_later(
    session, factory, live_twilio_app, twilio_fake
):
    _programme(session, factory, MORALE)
    twilio_fake.hang_next(5)
    started = dt.datetime.now(dt.UTC)
    assert _send(session, live_twilio_app, timeout=0.5) == 0
    assert (dt.datetime.now(dt.UTC) - started).total_seconds() < 4
    _fresh(session)
    message = session.scalars(select(Message)).one()
    assert (message.status, message.error_code) == ("error", "timeout")
    assert session.scalars(select(Invitation)).one().status == "pending"


def test_a_conversation_resumes_later_and_ends_when_the_wave_closes(
    session, factory, live_twilio_app, twilio_fake
):
    asks = [("appraisal_360", {"roles": STAFF}, "sms")]
    wave, (worker,) = _programme(session, factory, asks)
    wave.instruments[0].sms_mode = "conversation"
    session.commit()
    _send(session, live_twilio_app)
    url = f"{live_twilio_app.url}/twilio/sms"
    assert "Q2/11" in twilio_fake.deliver_inbound(url, worker.mobile, "4").text
    # days later, the next reply answers question 2: the state was kept
    assert "Q3/11" in twilio_fake.deliver_inbound(url, worker.mobile, "5").text
    _fresh(session)
    assert sorted(a.value for a in session.scalars(select(Answer))) == [4, 5]
    wave = session.merge(wave)
    wave.closes_at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    session.commit()
    closed = twilio_fake.deliver_inbound(url, worker.mobile, "3")
    assert closed.status_code == 200 and "<Message>" in closed.text
    assert _count(session, Answer) == 2
