"""Erasure, subject access and retention (storage.privacy), on stored data.

The world: a morale survey asked before and after (baseline and end waves) of the care
workers of a home, and a 360 appraisal of a manager by her staff and her home's owner;
texts, emails, a STOP and an unsubscribe stored as the app stores them.
"""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from sqlalchemy import JSON, String, Text, func, select

from reports.dispositions import dispositions
from reports.frames import answers_frame, invitations_frame
from reports.service import ReportRequest, build_report
from storage.audit import find_events
from storage.models import (
    Answer,
    Base,
    Invitation,
    Message,
    OptOut,
    OutboxItem,
    Person,
    Wave,
)
from storage.privacy import (
    ERASED_NAME,
    SUPPRESSION_KEY_INFO,
    PrivacyError,
    erase_person,
    find_person,
    opt_out_addresses,
    plan_erasure,
    purge_expired,
    stale_suppressions,
    subject_access_export,
    suppression_key,
)
from surveys.answers import complete_response, record_answer
from surveys.invitations import expire_wave, open_wave, set_status
from surveys.opt_outs import opt_out

KEY = suppression_key("test-secret-key-for-the-suite")
OPENS = dt.datetime(2027, 1, 4, 9, tzinfo=dt.UTC)
END_OPENS = dt.datetime(2027, 7, 5, 8, tzinfo=dt.UTC)
AFTER = dt.datetime(2027, 9, 1, 12, tzinfo=dt.UTC)  # both waves closed
OUR_NUMBER = "+447700900999"
MOBILE = "+447700900777"
EMAIL = "zebedee.quixley@example.org"
SECRET_WORDS = "banana-split-42"
MORALE = {"self": None}
STAFF = ["deputy_manager", "nurse", "senior_care_worker", "care_worker"]
AUDIENCE_360 = {
    "subject_role": "manager",
    "raters": {"self": ["manager"], "staff": STAFF, "line_manager": ["proprietor"]},
}


def _run_wave(session, wave: Wave, answers: dict[int, int | None]) -> None:
    """Open the wave, send everything, record each person's morale (None: no answer), close."""
    open_wave(session, wave, wave.opens_at)
    at = wave.opens_at + dt.timedelta(hours=2)
    for invitation in session.scalars(select(Invitation).where(Invitation.wave_id == wave.id)):
        set_status(invitation, "sent", at)
        value = answers.get(invitation.person_id)
        if value is not None:
            record_answer(session, invitation, "morale", value, "sms", at)
            complete_response(session, invitation, at)
    expire_wave(session, wave, wave.closes_at)
    session.flush()


@pytest.fixture
def morale(session, factory):
    """Seven care workers of one home answer morale twice; Zebedee also texted and stopped."""
    home = factory.home("Willow Court")
    zebedee = factory.person(
        home,
        given_name="Zebedee",
        family_name="Quixley",
        mobile=MOBILE,
        email=EMAIL,
        external_id="ZQ-991",
        active_from=dt.date(2026, 3, 14),
    )
    others = [factory.person(home) for _ in range(6)]
    programme, baseline = factory.programme(
        [home], [("staff_morale", {"roles": ["care_worker"]}, "sms")], opens=OPENS
    )
    end = factory.later_wave(baseline, opens=END_OPENS)  # six months on, asking the same
    everyone = [zebedee, *others]
    _run_wave(
        session,
        baseline,
        {p.id: v for p, v in zip(everyone, [2, 3, 2, 4, 3, 2, None], strict=True)},
    )
    _run_wave(session, end, {p.id: v for p, v in zip(everyone, [4, 4, 3, 5, 3, 4, 2], strict=True)})
    mine = session.scalar(
        select(Invitation).where(Invitation.person_id == zebedee.id, Invitation.wave_id == end.id)
    )
    _texts(session, zebedee, mine, others[0])
    opt_out(session, "sms", MOBILE, "STOP", zebedee, AFTER)
    opt_out(session, "email", EMAIL, "unsubscribe", zebedee, AFTER)
    session.commit()
    return programme, zebedee, others, mine


def _texts(session, person: Person, invitation: Invitation, colleague: Person) -> None:
    """What the app stores around an SMS survey: out, in, a colleague's mention, an outbox row."""
    sent = Message(
        direction="out",
        channel="sms",
        person=person,
        invitation=invitation,
        to_address=person.mobile,
        from_address=OUR_NUMBER,
        body=f"Hi {person.given_name}, how is morale? http://x/s/{invitation.token}",
        provider_id="SM" + "1" * 32,
        status="delivered",
    )
    received = Message(
        direction="in",
        channel="sms",
        person=person,
        to_address=OUR_NUMBER,
        from_address=person.mobile,
        body=f"{SECRET_WORDS} says hello",
        provider_id="SM" + "2" * 32,
        status="received",
    )
    mention = Message(
        direction="in",
        channel="sms",
        person=colleague,
        to_address=OUR_NUMBER,
        from_address=colleague.mobile,
        body=f"ask {person.full_name} about the rota",
        provider_id="SM" + "3" * 32,
        status="received",
    )
    session.add_all([sent, received, mention])
    session.flush()
    session.add(
        OutboxItem(
            key=f"invitation:{invitation.id}:reminder:1",
            invitation=invitation,
            purpose="reminder",
            reminder_number=1,
            channel="sms",
            status="failed",
            message_id=sent.id,
            last_error=f"21211: The 'To' number {person.mobile} is not valid",
        )
    )
    session.flush()


def _every_text(session) -> str:
    """Every text and JSON value of every row of every table, lower-cased, as one string."""
    chunks = []
    for table in Base.metadata.sorted_tables:
        columns = [c for c in table.columns if isinstance(c.type, String | Text | JSON)]
        # UTCDateTime and other decorators are not text; String covers VARCHAR and friends.
        for row in session.execute(select(*columns)) if columns else []:
            for value in row:
                if isinstance(value, dict | list):
                    chunks.append(json.dumps(value))
                elif isinstance(value, str):
                    chunks.append(value)
    return "\n".join(chunks).lower()


def _report_tables(session, key: str) -> dict[str, pd.DataFrame]:
    return build_report(session, ReportRequest(key, pre="baseline", post="end")).tables


# --- erasure ------------------------------------------------------------------------------


def test_after_erasure_nothing_of_the_person_is_left_in_any_table(session, morale):
    programme, zebedee, _, invitation = morale
    token = invitation.token
    erase_person(session, zebedee, actor="cli:test", key=KEY, now=AFTER)
    session.commit()
    everything = _every_text(session)
    for needle in ("zebedee", "quixley", "7700900777", "zq-991", SECRET_WORDS, token.lower()):
        assert needle not in everything, needle


def test_keep_anonymous_changes_no_report_figure(session, morale):
    programme, zebedee, _, _ = morale
    before = _report_tables(session, programme.key)
    answers_before = answers_frame(session, programme.key)
    plan = erase_person(session, zebedee, actor="cli:test", key=KEY, now=AFTER)
    session.commit()
    assert [p.mode for p in plan.programmes] == ["keep_anonymous"]
    after = _report_tables(session, programme.key)
    assert list(after) == list(before)
    for name, table in before.items():
        pd.testing.assert_frame_equal(after[name], table, obj=name)
    answers = answers_frame(session, programme.key)
    assert len(answers) == len(answers_before)
    assert zebedee.id not in set(answers["person_id"])


def test_kept_answers_stay_a_pair_held_by_a_record_with_nothing_of_the_person(session, morale):
    programme, zebedee, _, _ = morale
    old_id = zebedee.id
    erase_person(session, zebedee, actor="cli:test", key=KEY, now=AFTER)
    session.commit()
    answers = answers_frame(session, programme.key)
    unknown = answers[~answers["person_id"].isin(_roster_ids(session))]
    assert sorted(unknown["wave"]) == ["baseline", "end"]
    assert unknown["person_id"].nunique() == 1 and old_id not in set(answers["person_id"])
    tombstone = session.get(Person, int(unknown["person_id"].iloc[0]))
    assert (tombstone.given_name, tombstone.family_name) == (ERASED_NAME, "")
    assert (tombstone.mobile, tombstone.email, tombstone.external_id) == (None, None, None)
    assert (tombstone.role, tombstone.care_home_id) == ("care_worker", zebedee.care_home_id)
    # Roster dates move to wave days: the day they joined is not kept, and no later
    # wave can invite the tombstone.
    assert tombstone.active_from == dt.date(2027, 1, 4)
    assert tombstone.active_to == dt.date(2027, 7, 20)
    assert not tombstone.is_active_on(dt.date(2028, 1, 1))


def _roster_ids(session) -> set[int]:
    return set(session.scalars(select(Person.id).where(Person.given_name != ERASED_NAME)))


def test_a_leavers_disposition_is_the_same_after_erasure(session, factory):
    home = factory.home("Ash Lodge")
    stayers = [factory.person(home) for _ in range(5)]
    leaver = factory.person(home, active_from=dt.date(2026, 6, 1), active_to=dt.date(2027, 1, 10))
    programme, wave = factory.programme(
        [home], [("staff_morale", {"roles": ["care_worker"]}, "sms")], opens=OPENS
    )
    _run_wave(session, wave, {p.id: 3 for p in stayers})  # the leaver never answers

    def outcomes() -> list[tuple[str, str]]:
        frame = dispositions(invitations_frame(session, programme.key), timezone="Europe/London")
        return sorted(zip(frame["disposition"], frame["disposition_reason"], strict=True))

    before = outcomes()
    assert ("NC", "left during the wave") in before
    erase_person(session, leaver, actor="cli:test", key=KEY, now=AFTER)
    assert outcomes() == before
    tombstone = session.scalar(select(Person).where(Person.given_name == ERASED_NAME))
    # Left on 10 January: kept as "by the wave's last day", the day itself is gone.
    assert (tombstone.active_from, tombstone.active_to) == (OPENS.date(), dt.date(2027, 1, 18))


def test_delete_removes_their_answers_and_invitations(session, morale):
    programme, zebedee, others, _ = morale
    programme.settings = {"erasure": "delete"}
    session.commit()
    counted = invitations_frame(session, programme.key)
    answers_before = len(answers_frame(session, programme.key))
    plan = erase_person(session, zebedee, actor="cli:test", key=KEY, now=AFTER)
    session.commit()
    assert [(p.mode, p.invitations, p.answers) for p in plan.programmes] == [("delete", 2, 2)]
    assert len(answers_frame(session, programme.key)) == answers_before - 2
    left = invitations_frame(session, programme.key)
    assert len(left) == len(counted) - 2
    assert set(left["person_id"]) == {p.id for p in others}
    assert (
        session.scalar(select(func.count(Person.id)).where(Person.given_name == ERASED_NAME)) == 0
    )


def test_a_group_smaller_than_the_threshold_is_deleted_even_when_keeping(session, factory):
    home = factory.home("Tiny House")
    people = [factory.person(home) for _ in range(3)]
    programme, wave = factory.programme(
        [home], [("staff_morale", {"roles": ["care_worker"]}, "sms")], opens=OPENS
    )
    _run_wave(session, wave, {p.id: 3 for p in people})
    plan = plan_erasure(session, people[0])
    assert plan.programmes[0].mode == "delete"
    assert "single them out" in plan.programmes[0].reason
    erase_person(session, people[0], actor="cli:test", key=KEY, now=AFTER)
    assert len(answers_frame(session, programme.key)) == 2


def test_a_stop_outlives_the_number_as_a_keyed_digest_only(session, morale):
    _, zebedee, _, _ = morale
    erase_person(session, zebedee, actor="cli:test", key=KEY, now=AFTER)
    session.commit()
    stored = session.scalars(select(OptOut.address)).all()
    assert MOBILE not in stored and EMAIL not in stored
    assert len(stored) == 2 and all(a.startswith("hmac:") for a in stored)
    # What an opt-out lookup matches, with and without the app's key on the session.
    assert opt_out_addresses(session, "sms", MOBILE) == [MOBILE]
    session.info[SUPPRESSION_KEY_INFO] = KEY
    found = select(OptOut.id).where(
        OptOut.channel == "sms",
        OptOut.address.in_(opt_out_addresses(session, "sms", MOBILE)),
        OptOut.revoked_at.is_(None),
    )
    assert session.scalar(found) is not None
    assert stale_suppressions(session, KEY) == 0
    assert stale_suppressions(session, suppression_key("another-secret-key")) == 2


def test_messages_are_gone_and_mentions_blanked(session, morale):
    _, zebedee, others, _ = morale
    erase_person(session, zebedee, actor="cli:test", key=KEY, now=AFTER)
    session.commit()
    bodies = session.execute(select(Message.person_id, Message.body)).all()
    assert bodies == [(others[0].id, None)]  # the colleague's text named Zebedee in full
    outbox = session.scalar(select(OutboxItem))
    assert (outbox.message_id, outbox.last_error) == (None, None)


def test_erasure_is_audit_logged_without_anything_that_leads_to_the_answers(session, morale):
    programme, zebedee, _, _ = morale
    old_id = zebedee.id
    erase_person(session, zebedee, actor="cli:test", key=KEY, now=AFTER)
    session.commit()
    [event] = find_events(session, action="person_erase")
    assert (event.actor, event.target) == ("cli:test", f"person:{old_id}")
    # Counts and modes only: no id of the record that now holds the answers.
    assert event.detail == {
        "messages_deleted": 2,
        "opt_outs_kept": 2,
        "programmes": {
            programme.key: {
                "mode": "keep_anonymous",
                "invitations": 2,
                "answers": 2,
                "about_them": 0,
            }
        },
    }
    tombstone_id = session.scalar(select(Person.id).where(Person.given_name == ERASED_NAME))
    with pytest.raises(PrivacyError):
        find_person(session, f"id:{tombstone_id}")


def test_open_invitations_close_and_their_links_stop_working(session, factory):
    home = factory.home("Open House")
    people = [factory.person(home) for _ in range(5)]
    _, wave = factory.programme(
        [home], [("staff_morale", {"roles": ["care_worker"]}, "sms")], opens=OPENS
    )
    open_wave(session, wave, OPENS)
    mine = session.scalar(select(Invitation).where(Invitation.person_id == people[0].id))
    token = mine.token
    erase_person(session, people[0], actor="cli:test", key=KEY, now=OPENS)
    session.commit()
    assert session.scalar(select(Invitation).where(Invitation.token == token)) is None
    statuses = session.scalars(
        select(Invitation.status).where(Invitation.person_id.not_in([p.id for p in people]))
    ).all()
    assert statuses == ["opted_out"]


# --- 360: erasure and subject access -------------------------------------------------------


@pytest.fixture
def appraisal(session, factory):
    """Margaret Moss, manager of Elm House, appraised by six staff and the owner."""
    home = factory.home("Elm House")
    manager = factory.person(home, role="manager", given_name="Margaret", family_name="Moss")
    staff = [factory.person(home, given_name=f"Rater{n}", family_name="Alpha") for n in range(6)]
    owner = factory.person(home, role="proprietor", given_name="Owen", family_name="Oak")
    programme, wave = factory.programme(
        [home], [("appraisal_360", AUDIENCE_360, None)], opens=OPENS
    )
    open_wave(session, wave, OPENS)
    at = OPENS + dt.timedelta(hours=1)
    for n, invitation in enumerate(session.scalars(select(Invitation)).all()):
        record_answer(session, invitation, "listens_to_staff", 1 + n % 5, "web", at)
        complete_response(session, invitation, at)
        if invitation.person_id != manager.id:
            session.add(
                Message(
                    direction="out",
                    channel="email",
                    person_id=invitation.person_id,
                    invitation=invitation,
                    to_address="rater@example.org",
                    from_address="carepulse@example.org",
                    subject="How does Margaret Moss lead?",
                    body="Please rate Margaret Moss.",
                    status="sent",
                )
            )
    session.commit()
    return programme, manager, staff, owner


def test_a_managers_subject_access_never_shows_raters_or_their_ratings(session, appraisal):
    _, manager, staff, owner = appraisal
    export = subject_access_export(session, manager, actor="cli:test", now=AFTER)
    text = json.dumps(export)
    for rater in [*staff, owner]:
        for value in (rater.full_name, rater.mobile, rater.email):
            assert value not in text
    assert [i["relation"] for i in export["invitations"]] == ["self"]
    [own] = export["invitations"]
    assert [a["item"] for a in own["response"]["answers"]] == ["listens_to_staff"]
    assert own["response"]["answers"][0]["question"].startswith("I ")
    assert export["person"]["email"] == manager.email
    [event] = find_events(session, action="subject_access_export")
    assert event.target == f"person:{manager.id}"


def test_a_rater_sees_whom_they_rated_and_their_own_answers_only(session, appraisal):
    _, manager, staff, owner = appraisal
    export = subject_access_export(session, staff[0], actor="cli:test", now=AFTER)
    [invitation] = export["invitations"]
    assert (invitation["relation"], invitation["about"]) == ("staff", "Margaret Moss")
    assert invitation["response"]["answers"][0]["question"].startswith("My manager")
    text = json.dumps(export)
    for other in [*staff[1:], owner]:
        assert other.full_name not in text
    assert manager.email not in text and manager.mobile not in text
    assert len(export["messages"]) == 1  # the invitation email to them


def test_erasing_a_manager_deletes_the_appraisals_of_her(session, appraisal):
    programme, manager, staff, _ = appraisal
    plan = plan_erasure(session, manager)
    assert [(p.mode, p.about_them) for p in plan.programmes] == [("delete", 7)]
    erase_person(session, manager, actor="cli:test", key=KEY, now=AFTER)
    session.commit()
    assert session.scalar(select(func.count(Invitation.id))) == 0
    assert session.scalar(select(func.count(Answer.id))) == 0
    everything = _every_text(session)
    assert "margaret" not in everything and "moss" not in everything
    # The raters' own message log stays, without the text that named her.
    assert session.scalar(select(func.count(Message.id))) == len(staff) + 1
    assert set(session.scalars(select(Message.body))) == {None}


# --- finding people ---------------------------------------------------------------------


def test_people_are_found_by_id_staff_number_mobile_or_email(session, morale):
    _, zebedee, _, _ = morale
    for reference in (f"id:{zebedee.id}", "ZQ-991", "07700 900777", "+447700900777", EMAIL.upper()):
        assert find_person(session, reference).id == zebedee.id
    with pytest.raises(PrivacyError, match="no one"):
        find_person(session, "07700 900000")
    with pytest.raises(PrivacyError, match="no one"):
        find_person(session, str(zebedee.id))  # a bare number is a staff number, not an id


# --- retention ----------------------------------------------------------------------------


def test_purge_waits_for_retention_days_after_the_last_wave_closes(session, morale):
    programme, zebedee, _, _ = morale
    programme.settings = {"retention_days": 30}
    session.commit()
    last_close = END_OPENS + dt.timedelta(days=14)
    early = purge_expired(session, key=KEY, actor="system", now=last_close + dt.timedelta(days=29))
    assert (early.people, early.messages, early.opt_outs) == (0, 0, 0)
    assert zebedee.mobile == MOBILE
    answers = len(answers_frame(session, programme.key))
    report = purge_expired(session, key=KEY, actor="system", now=last_close + dt.timedelta(days=31))
    session.commit()
    assert report.people == 7 and report.opt_outs == 2 and report.messages == 3
    session.refresh(zebedee)
    assert (zebedee.mobile, zebedee.email, zebedee.given_name) == (None, None, "Zebedee")
    assert set(session.scalars(select(Message.body))) == {None}
    assert MOBILE not in _every_text(session) and SECRET_WORDS not in _every_text(session)
    assert len(answers_frame(session, programme.key)) == answers
    [event] = find_events(session, action="retention_purge")
    assert event.detail == {"people": 7, "messages": 3, "opt_outs": 2}


def test_a_dry_run_counts_what_a_purge_would_remove_and_removes_nothing(session, morale):
    programme, zebedee, _, _ = morale
    later = AFTER + dt.timedelta(days=400)
    dry = purge_expired(session, key=KEY, actor="system", now=later, dry_run=True)
    session.commit()
    assert dry.people == 7 and dry.dry_run
    session.refresh(zebedee)
    assert zebedee.mobile == MOBILE
    assert find_events(session, action="retention_purge") == []
    real = purge_expired(session, key=KEY, actor="system", now=later)
    assert (real.people, real.messages, real.opt_outs) == (dry.people, dry.messages, dry.opt_outs)


def test_someone_in_a_programme_still_running_is_not_purged(session, morale, factory):
    programme, zebedee, others, _ = morale
    programme.settings = {"retention_days": 30}
    home = session.get(Person, others[0].id).care_home
    factory.programme(
        [home],
        [("staff_morale", {"roles": ["care_worker"]}, "sms")],
        opens=AFTER + dt.timedelta(days=300),
    )
    session.commit()
    report = purge_expired(session, key=KEY, actor="system", now=AFTER + dt.timedelta(days=100))
    assert report.people == 0
    session.refresh(zebedee)
    assert zebedee.mobile == MOBILE
