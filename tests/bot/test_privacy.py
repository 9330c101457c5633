"""Privacy in the app: `carepulse erase / subject-access / purge`, the admin's person search
and erase pages, STOP after erasure, the programme file's settings, and log masking."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import stat
import threading
import urllib.error
import urllib.request

import pytest
from sqlalchemy import func, select
from werkzeug.serving import make_server

from bot.cli import load_programme_command
from bot.db import get_session
from bot.log_privacy import install
from bot.outbound import Outbound
from bot.privacy_commands import erase_command, purge_command, subject_access_command
from bot.transports import DevMailbox, DevPhone
from storage.accounts import create_account
from storage.audit import find_events
from storage.models import Invitation, Message, OptOut, Person, Programme
from storage.privacy import erase_person, suppression_key
from surveys.invitations import open_wave
from surveys.opt_outs import opt_out
from tests.conftest import TWILIO_TOKEN
from tests.support.web import PASSWORD, csrf_token, make_app, sign_in, twilio_settings

MOBILE = "+447700900777"
OPENS = dt.datetime(2027, 1, 4, 9, tzinfo=dt.UTC)
MORALE = [("staff_morale", {"roles": ["care_worker"]}, "sms")]


def _form_csrf(html: str, action: str) -> str:
    """The CSRF token of the form posting to `action` (the page header has its own)."""
    form = html[html.index(f'action="{action}"') :]
    return csrf_token(form)


def _fresh(session) -> None:
    """Forget what this session read: the app has committed since."""
    session.rollback()
    session.expire_all()


def _on_roster(session, person_id: int) -> bool:
    return bool(session.scalar(select(func.count(Person.id)).where(Person.id == person_id)))


@pytest.fixture
def zebedee(session, factory):
    person = factory.person(
        factory.home("Willow Court"),
        given_name="Zebedee",
        family_name="Quixley",
        mobile=MOBILE,
        external_id="ZQ-991",
    )
    session.commit()
    return person


# --- console commands ---------------------------------------------------------------------


def test_erase_shows_what_it_will_do_and_asks_first(runner, session, zebedee):
    refused = runner.invoke(erase_command, ["ZQ-991"], input="n\n")
    assert refused.exit_code == 1
    assert "Zebedee Quixley (care worker, Willow Court)" in refused.output
    assert "nothing was erased" in refused.output
    person_id = zebedee.id
    _fresh(session)
    assert _on_roster(session, person_id)
    done = runner.invoke(erase_command, ["07700 900777"], input="y\n")
    assert done.exit_code == 0, done.output
    assert f"erased id:{person_id}" in done.output and "roster file" in done.output
    _fresh(session)
    assert not _on_roster(session, person_id)
    [event] = find_events(session, action="person_erase")
    assert event.actor.startswith("cli:") and event.target == f"person:{person_id}"


def test_erase_names_what_it_cannot_find(runner, zebedee):
    result = runner.invoke(erase_command, ["07700 900111", "--yes"])
    assert result.exit_code == 1 and "no one on the roster" in result.output


def test_subject_access_writes_a_private_json_file(runner, session, zebedee, tmp_path):
    out = tmp_path / "sar" / "zebedee.json"
    result = runner.invoke(subject_access_command, [f"id:{zebedee.id}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "0 invitation(s)" in result.output
    data = json.loads(out.read_text())
    assert (data["person"]["given_name"], data["person"]["mobile"]) == ("Zebedee", MOBILE)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    _fresh(session)
    assert [e.target for e in find_events(session, action="subject_access_export")] == [
        f"person:{zebedee.id}"
    ]


def test_purge_dry_run_says_what_it_would_remove(runner, session, factory, zebedee):
    home = session.get(Person, zebedee.id).care_home
    factory.programme([home], MORALE, opens=dt.datetime(2024, 1, 8, 9, tzinfo=dt.UTC))
    session.commit()
    result = runner.invoke(purge_command, ["--dry-run"])
    assert result.exit_code == 0, result.output
    assert "would remove the mobile and email of 1 person" in result.output
    _fresh(session)
    assert session.get(Person, zebedee.id).mobile == MOBILE


# --- the programme file ------------------------------------------------------------------

PROGRAMME = """
programme: {key: p1, name: P1, erasure: %s, retention_days: %s}
cohorts:
  - key: c1
    name: C1
    homes: [Willow Court]
    waves:
      - {key: baseline, kind: baseline, opens: "2027-01-04 09:00", closes: "2027-01-18 20:00",
         ask: [{instrument: staff_morale, roles: [care_worker]}]}
"""


def test_the_programme_file_sets_erasure_and_retention(runner, session, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(PROGRAMME % ("delete", "30"))
    assert runner.invoke(load_programme_command, [str(path)]).exit_code == 0
    _fresh(session)
    settings = session.scalar(select(Programme.settings))
    assert (settings["erasure"], settings["retention_days"]) == ("delete", 30)
    path.write_text(PROGRAMME % ("forget", "0"))
    refused = runner.invoke(load_programme_command, [str(path)])
    assert refused.exit_code == 1
    assert "programme.erasure: 'forget' is not one of ['keep_anonymous', 'delete']" in (
        refused.output
    )
    assert "programme.retention_days: expected a whole number of days >= 1" in refused.output


# --- admin pages ---------------------------------------------------------------------------


@pytest.fixture
def admin(app, session):
    from bot import admin_people

    if "admin_people" not in app.blueprints:  # until create_app registers it
        app.register_blueprint(admin_people.bp)
    create_account(session, "admin@example.org", PASSWORD, "admin")
    create_account(session, "eval@example.org", PASSWORD, "evaluator")
    session.commit()


def test_only_admins_reach_the_people_pages(client, admin, zebedee):
    assert client.get("/admin/people?q=zeb").status_code == 302  # to the sign-in page
    assert sign_in(client, "eval@example.org").status_code == 303
    assert client.get("/admin/people?q=zeb").status_code == 403
    assert client.post(f"/admin/people/{zebedee.id}/erase").status_code == 403


def test_an_admin_finds_a_person_and_erases_them_after_confirming(client, session, admin, zebedee):
    person_id = zebedee.id
    assert sign_in(client, "admin@example.org").status_code == 303
    found = client.get("/admin/people?q=quixley").get_data(as_text=True)
    assert "Zebedee Quixley" in found and f"/admin/people/{zebedee.id}" in found
    page = client.get(f"/admin/people/{zebedee.id}").get_data(as_text=True)
    assert "cannot be undone" in page
    url = f"/admin/people/{zebedee.id}/erase"
    forged = client.post(url, data={"confirm": "yes"})
    assert forged.status_code == 400 and "expired" in forged.get_data(as_text=True)
    token = _form_csrf(page, url)
    unconfirmed = client.post(url, data={"csrf_token": token})
    assert unconfirmed.status_code == 400
    assert "Tick the box" in unconfirmed.get_data(as_text=True)
    _fresh(session)
    assert _on_roster(session, person_id)
    done = client.post(url, data={"csrf_token": token, "confirm": "yes"})
    assert done.status_code == 303
    assert "has been erased" in client.get(done.headers["Location"]).get_data(as_text=True)
    _fresh(session)
    assert not _on_roster(session, person_id)
    [event] = find_events(session, action="person_erase")
    assert (event.actor, event.target) == ("admin@example.org", f"person:{person_id}")
    assert client.get(f"/admin/people/{person_id}").status_code == 404


# --- STOP after erasure -------------------------------------------------------------------


def _texts_sent(session) -> int:
    _fresh(session)
    return session.scalar(select(func.count(Message.id)).where(Message.direction == "out"))


def test_an_erased_number_that_said_stop_is_never_texted_again(app, client, session, factory):
    home = factory.home("Willow Court")
    person = factory.person(home, mobile=MOBILE)
    opt_out(session, "sms", MOBILE, "STOP", person)
    session.commit()
    reply = "/dev/phone/%2B447700900777/reply"
    client.post(reply, data={"body": "hello"})
    assert _texts_sent(session) == 0
    with app.app_context():
        db = get_session()
        key = suppression_key(app.config["SECRET_KEY"])
        erase_person(db, db.get(Person, person.id), actor="cli:test", key=key)
        db.commit()
    _fresh(session)
    assert MOBILE not in session.scalars(select(OptOut.address)).all()
    # The number texts in again: still no reply of any kind.
    client.post(reply, data={"body": "hello again"})
    assert _texts_sent(session) == 0
    # A roster lists the number again, for someone new: the invitation is not sent.
    newcomer = factory.person(home, mobile=MOBILE)
    _, wave = factory.programme([home], MORALE, opens=OPENS)
    open_wave(session, wave, OPENS)
    session.commit()
    with app.app_context():
        db = get_session()
        invitation = db.scalar(select(Invitation).where(Invitation.person_id == newcomer.id))
        outbound = Outbound(app.config["CAREPULSE"], DevPhone(), DevMailbox())
        assert outbound.send_invitation(db, invitation, OPENS + dt.timedelta(hours=1)) is None
        assert invitation.status == "opted_out"
        db.commit()
    assert _texts_sent(session) == 0


# --- log masking ----------------------------------------------------------------------------


@pytest.fixture
def twilio_app(engine, database_url, tmp_path):
    app = make_app(database_url, tmp_path, **twilio_settings())
    install(app)
    return app


def test_log_records_lose_numbers_tokens_and_credentials(twilio_app, caplog):
    caplog.set_level(logging.INFO)
    api_token = "cp_1a2b3c4d_" + "x" * 43
    twilio_app.logger.warning(
        "text to %s failed; headers %s",
        MOBILE,
        {"Authorization": f"Bearer {api_token}", "Host": "api.example"},
    )
    logging.getLogger("carepulse.privacy.test").info(
        "link http://127.0.0.1:5000/s/%s for person7@example.org, auth token %s",
        "A" * 32,
        TWILIO_TOKEN,
    )
    try:
        raise RuntimeError("connect to postgresql://app:hunter2@db/carepulse failed")
    except RuntimeError:
        logging.getLogger("carepulse.privacy.test").exception("password=hunter2 refused")
    text = caplog.text
    for secret in (MOBILE, "7700900777", api_token, "A" * 32, TWILIO_TOKEN, "hunter2"):
        assert secret not in text, secret
    assert "+*********777" in text and "/s/[token]" in text and "p***@example.org" in text
    assert "'Authorization': '[redacted]'" in text and "'Host': 'api.example'" in text
    assert "RuntimeError" in text  # the traceback is kept, masked


def test_the_access_log_of_a_survey_link_has_no_token(twilio_app, caplog):
    caplog.set_level(logging.INFO, logger="werkzeug")
    server = make_server("127.0.0.1", 0, twilio_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    token = "Zy" * 16
    try:
        url = f"http://127.0.0.1:{server.server_port}/s/{token}"
        # An unknown link: the page says so (404), and the access log has its line.
        with contextlib.suppress(urllib.error.HTTPError):
            urllib.request.urlopen(url, timeout=5)
    finally:
        server.shutdown()
        thread.join(timeout=5)
    lines = [r.getMessage() for r in caplog.records if r.name == "werkzeug"]
    # (werkzeug colours the request line on a terminal; the words are what matter)
    assert any("GET /s/[token] HTTP/1.1" in line for line in lines), lines
    assert token not in caplog.text
