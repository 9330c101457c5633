"""Whatever a signed or unsigned request carries, the webhooks never answer 500."""

from __future__ import annotations

import datetime as dt
import hashlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from tests.conftest import TWILIO_TOKEN
from tests.support.web import make_app, twilio_settings

URL = "http://127.0.0.1:5000"
FIELDS = [
    "MessageSid",
    "From",
    "To",
    "Body",
    "AccountSid",
    "NumMedia",
    "MessageStatus",
    "ErrorCode",
    "SmsSid",
    "Extra",
]
text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1400, max_size=1600),
    st.sampled_from(
        [
            "🙂👍",
            "٤",
            "مرحبا بك",
            "STOP",
            "4",
            "SM" + "a" * 32,
            "+447700900123",
            "'; DROP TABLE answers;--",
            "=cmd|' /C calc'!A0",
            "\x00",
            "%00",
            "",
        ]
    ),
)
forms = st.dictionaries(st.sampled_from(FIELDS), text, max_size=8)


def test_signed_arbitrary_forms_never_500(engine, database_url, tmp_path, factory, session):
    home = factory.home()
    person = factory.person(home, mobile="+447700900123")
    _, wave = factory.programme(
        [home],
        [("staff_morale", {"roles": ["care_worker"]}, "sms")],
        opens=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
    )
    from surveys.invitations import open_wave, set_status
    from surveys.sms_inbox import opening

    open_wave(session, wave)
    (invitation,) = wave_invitations(session, wave)
    opening(invitation)
    set_status(invitation, "sent")
    session.commit()
    # Signatures are computed over URL: the app must know itself by it.
    client = make_app(
        database_url, tmp_path, PUBLIC_BASE_URL=URL, **twilio_settings()
    ).test_client()
    validator = RequestValidator(TWILIO_TOKEN)

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        form=forms,
        path=st.sampled_from(["/twilio/sms", "/twilio/status"]),
        sign=st.booleans(),
        sender=st.booleans(),
    )
    def post(form, path, sign, sender):
        if sender:  # a known person's number, so answers reach a real conversation
            sid = "SM" + hashlib.md5(repr(form).encode()).hexdigest()
            form = {**form, "From": person.mobile, "MessageSid": sid}
        headers = {}
        if sign:
            headers["X-Twilio-Signature"] = validator.compute_signature(URL + path, form)
        response = client.post(path, data=form, headers=headers)
        assert response.status_code < 500, (path, form, response.status_code)
        if not sign:
            assert response.status_code == 403

    post()


def wave_invitations(session, wave):
    from sqlalchemy import select

    from storage.models import Invitation

    return session.scalars(select(Invitation).where(Invitation.wave_id == wave.id)).all()
