"""The web pages a newcomer, a respondent and a load balancer see."""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select

from storage.accounts import create_account
from storage.models import Answer, Invitation, Message
from surveys.invitations import open_wave
from tests.support.web import PASSWORD, make_app, sign_in, twilio_settings


def _fresh(session):
    """End the test's transaction and forget loaded rows, to see what the app committed."""
    session.rollback()
    session.expire_all()


STAFF = ["deputy_manager", "nurse", "senior_care_worker", "care_worker"]
NOW = dt.datetime.now(dt.UTC)


def test_healthz_is_ok_on_a_migrated_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ok"


def test_healthz_is_503_on_an_unmigrated_database(tmp_path):
    app = make_app(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["database"] == "not migrated"


def test_healthz_is_503_when_the_database_is_unreachable(tmp_path):
    url = "postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=1"
    app = make_app(url, tmp_path)
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["database"] == "unreachable"


def _open_morale_wave(session, factory, workers=2):
    home = factory.home("Willow Court")
    people = [factory.person(home, given_name=f"Amara{i}") for i in range(workers)]
    _, wave = factory.programme(
        [home],
        [("staff_morale", {"roles": STAFF}, "sms")],
        opens=NOW - dt.timedelta(hours=1),
        closes=NOW + dt.timedelta(days=7),
    )
    open_wave(session, wave, NOW)
    session.commit()
    return wave, people


def test_dev_phone_runs_the_real_conversation(client, session, factory, app):
    from bot.outbound import Outbound
    from bot.transports import DevMailbox, DevPhone

    wave, people = _open_morale_wave(session, factory, workers=1)
    outbound = Outbound(app.config["CAREPULSE"], DevPhone(), DevMailbox())
    assert outbound.send_pending(session, NOW) == 1
    session.commit()
    invitation = session.scalars(select(Invitation)).one()
    assert invitation.status == "delivered"
    phone = client.get("/dev/phone").get_data(as_text=True)
    assert "Amara0" in phone and "Willow Court" in phone
    assert "How is morale in your care home at the moment?" in phone
    number = people[0].mobile
    garbled = client.post(f"/dev/phone/{number}/reply", data={"body": "9"})
    assert garbled.status_code == 302
    page = client.get("/dev/phone").get_data(as_text=True)
    assert "9 is not" in page, page
    client.post(f"/dev/phone/{number}/reply", data={"body": "four"})
    _fresh(session)
    inbound = session.scalars(select(Message).where(Message.direction == "in")).all()
    assert [(m.from_address, m.body, m.person_id) for m in inbound] == [
        (number, "9", people[0].id),
        (number, "four", people[0].id),
    ]
    answer = session.scalars(select(Answer)).one()
    assert (answer.item_id, answer.value, answer.channel) == ("morale", 4, "sms")
    assert session.get(Invitation, invitation.id).status == "completed"
    assert "Thank you" in client.get("/dev/phone").get_data(as_text=True)
    assert client.post("/dev/phone/not-a-number/reply", data={"body": "x"}).status_code == 404


def test_every_sent_sms_fits_one_segment(client, session, factory, app):
    from bot.outbound import Outbound
    from bot.transports import DevMailbox, DevPhone
    from surveys.sms import encoding, segments

    home = factory.home("The Royal Borough Residential and Nursing Home")
    factory.person(home, given_name="Siân-Bartholomew")
    factory.person(home, given_name="Zoë")
    link = {"roles": STAFF}
    _, wave = factory.programme(
        [home],
        [("staff_morale", {"roles": STAFF}, "sms"), ("appraisal_360", link, "sms")],
        opens=NOW - dt.timedelta(hours=1),
    )
    wave.instruments[1].sms_mode = "link"
    open_wave(session, wave, NOW)
    Outbound(app.config["CAREPULSE"], DevPhone(), DevMailbox()).send_pending(session, NOW)
    bodies = [m.body for m in session.scalars(select(Message))]
    assert len(bodies) == 4
    for body in bodies:
        assert segments(body) == 1 and encoding(body) == "GSM-7", body
    assert sum(bool(re.search(r"/s/[A-Za-z0-9_-]{32}", b)) for b in bodies) == 2


def test_dev_pages_do_not_exist_when_real_providers_are_configured(tmp_path, database_url):
    smtp = {"SMTP_HOST": "127.0.0.1", "MAIL_FROM": "surveys@example.org"}
    client = make_app(database_url, tmp_path, **twilio_settings(), **smtp).test_client()
    assert client.get("/dev/phone").status_code == 404
    assert client.get("/dev/mailbox").status_code == 404


def test_dev_mailbox_stays_while_only_twilio_is_configured(tmp_path, database_url):
    client = make_app(database_url, tmp_path, **twilio_settings()).test_client()
    assert client.get("/dev/phone").status_code == 404
    assert client.get("/dev/mailbox").status_code == 200


def test_start_page_and_dev_pages_show_the_demo_programme(client, session, app):
    from bot.demo import seed
    from bot.outbound import Outbound
    from bot.transports import DevMailbox, DevPhone

    tick = seed(session, Outbound(app.config["CAREPULSE"], DevPhone(), DevMailbox()))
    session.commit()
    assert tick.opened == 1 and tick.invited == tick.sent > 20
    assert client.get("/").status_code == 302  # the start page is for leads and admins
    create_account(
        session,
        "lead@example.org",
        PASSWORD,
        "programme_lead",
        programme_keys=["nwl-leadership-2027"],
    )
    session.commit()
    assert sign_in(client, "lead@example.org").status_code == 303
    home = client.get("/").get_data(as_text=True)
    assert "NW London care home leadership programme 2027" in home
    for name in ("Willow Court", "Elmfield House", "Harrow Lodge"):
        assert name in home
    assert "Baseline (before the programme)" in home and ">open<" in home
    assert "GMT" in home or "BST" in home  # times in the programme's zone, not UTC
    phone = client.get("/dev/phone")
    mailbox = client.get("/dev/mailbox")
    assert phone.status_code == mailbox.status_code == 200
    assert phone.get_data(as_text=True).count("STOP to opt out") >= 20
    mail = mailbox.get_data(as_text=True)
    assert "How you feel about your work as a manager" in mail
    assert "/s/" in mail


def test_unknown_page_is_a_plain_404(client):
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert "Not Found" in response.get_data(as_text=True)


def test_a_360_rater_text_names_the_manager_and_fits_one_segment(session, factory, app):
    from bot.outbound import Outbound
    from bot.transports import DevMailbox, DevPhone
    from surveys.sms import segments

    home = factory.home("The Royal Borough of Kensington Residential and Nursing Home")
    factory.person(home, role="manager", given_name="Margaret")
    factory.person(home, given_name="Bartholomew-Alexander")
    audience = {"subject_role": "manager", "raters": {"staff": STAFF}}
    _, wave = factory.programme(
        [home], [("appraisal_360", audience, "sms")], opens=NOW - dt.timedelta(hours=1)
    )
    open_wave(session, wave, NOW)
    Outbound(app.config["CAREPULSE"], DevPhone(), DevMailbox()).send_pending(session, NOW)
    body = session.scalars(select(Message)).one().body
    assert "how does Margaret lead" in body and "/s/" in body
    assert segments(body) == 1
