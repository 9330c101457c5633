"""The 360-degree appraisal: who rates whom, in which relation, and named raters."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from bot.cli import cli
from reports.frames import answers_frame
from storage.models import Invitation
from surveys.answers import complete_response, record_answer
from surveys.invitations import RaterError, add_named_rater, open_wave

STAFF = ["deputy_manager", "nurse", "senior_care_worker", "care_worker"]
AUDIENCE = {
    "subject_role": "manager",
    "raters": {"self": ["manager"], "staff": STAFF, "line_manager": ["proprietor"]},
}
AT = dt.datetime(2027, 1, 4, 10, tzinfo=dt.UTC)


@pytest.fixture
def appraisal(session, factory):
    home, other_home = factory.home("Willow Court"), factory.home("Elmfield House")
    manager = factory.person(home, role="manager", given_name="Margaret", external_id="M1")
    staff = [factory.person(home, role="care_worker" if i < 4 else "nurse") for i in range(6)]
    owner = factory.person(home, role="proprietor", given_name="Owen", external_id="P1")
    peer = factory.person(other_home, role="manager", external_id="M2")
    programme, wave = factory.programme([home, other_home], [("appraisal_360", AUDIENCE, None)])
    return programme, wave, manager, staff, owner, peer


def test_self_six_staff_and_a_line_manager_are_stored_with_their_relations(session, appraisal):
    programme, wave, manager, staff, owner, peer = appraisal
    open_wave(session, wave, AT)
    invitations = session.scalars(
        select(Invitation).where(Invitation.subject_person_id == manager.id)
    ).all()
    relations = sorted((i.person_id, i.rater_relation) for i in invitations)
    assert relations == sorted(
        [(manager.id, "self"), (owner.id, "line_manager")] + [(s.id, "staff") for s in staff]
    )
    # the manager rates themself by email; staff get a link by text
    by_relation = {i.rater_relation: i.channel for i in invitations}
    assert by_relation == {"self": "email", "staff": "sms", "line_manager": "email"}
    for value, invitation in enumerate(invitations, start=1):
        record_answer(session, invitation, "listens_to_staff", min(value, 5), "web", AT)
        complete_response(session, invitation, AT)
    session.commit()
    frame = answers_frame(session, programme.key)
    mine = frame[frame["subject_id"] == manager.id]
    assert sorted(mine["relation"].value_counts().items()) == [
        ("line_manager", 1),
        ("self", 1),
        ("staff", 6),
    ]


def test_a_named_peer_is_invited_once(session, appraisal):
    _, wave, manager, _, _, peer = appraisal
    open_wave(session, wave, AT)
    first = add_named_rater(session, wave, manager, peer, "peer", AT)
    again = add_named_rater(session, wave, manager, peer, "peer", AT)
    assert first.id == again.id
    assert (first.rater_relation, first.channel, first.status) == ("peer", "email", "pending")
    assert [e.detail for e in first.events] == ["named rater"]


@pytest.mark.parametrize(
    ("who", "relation", "message"),
    [
        ("manager", "peer", "own rating is the self-rating"),
        ("peer", "staff", "relation must be line_manager or peer"),
        ("staff", "peer", None),
    ],
)
def test_named_raters_are_checked(session, appraisal, who, relation, message):
    _, wave, manager, staff, _, peer = appraisal
    rater = {"manager": manager, "peer": peer, "staff": staff[0]}[who]
    if message is None:
        subject = staff[0]  # a care worker is not appraised
        with pytest.raises(RaterError, match="is not appraised"):
            add_named_rater(session, wave, subject, peer, relation, AT)
        return
    with pytest.raises(RaterError, match=message):
        add_named_rater(session, wave, manager, rater, relation, AT)


def test_add_rater_command(runner, session, appraisal):
    programme, wave, manager, *_ = appraisal
    session.commit()
    result = runner.invoke(
        cli,
        [
            "add-rater",
            "--wave",
            "baseline",
            "--subject",
            "M1",
            "--rater",
            "M2",
            "--relation",
            "peer",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "invited as peer for Margaret Test in baseline" in result.output
    unknown = runner.invoke(
        cli,
        [
            "add-rater",
            "--wave",
            "baseline",
            "--subject",
            "M1",
            "--rater",
            "nobody@example.org",
            "--relation",
            "peer",
        ],
    )
    assert unknown.exit_code == 1
    assert "no one on the roster is 'nobody@example.org'" in unknown.output
    session.rollback()
    session.expire_all()
    peers = session.scalars(select(Invitation).where(Invitation.rater_relation == "peer")).all()
    assert len(peers) == 1
