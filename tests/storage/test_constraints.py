"""The database itself refuses duplicates, whatever the code above it does."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError

from storage.models import Answer, Invitation, Message, Person, Response


def _invitation(wave, person, token, subject=None, relation=None):
    return Invitation(
        wave=wave,
        instrument_version_id=wave.instruments[0].instrument_version_id,
        person=person,
        subject=subject,
        rater_relation=relation,
        channel="sms",
        token=token,
    )


def test_duplicate_invitation_is_refused_by_the_database(session, factory):
    home = factory.home()
    worker = factory.person(home)
    _, wave = factory.programme([home], [("staff_morale", {"roles": ["care_worker"]}, "sms")])
    session.add(_invitation(wave, worker, "token-a"))
    session.commit()
    session.add(_invitation(wave, worker, "token-b"))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    assert session.scalar(select(Invitation.id).where(Invitation.token == "token-b")) is None
    assert len(session.scalars(select(Invitation)).all()) == 1


def test_360_allows_one_invitation_per_subject_but_not_two_for_the_same(session, factory):
    home = factory.home()
    manager = factory.person(home, role="manager")
    other_manager = factory.person(home, role="manager")
    rater = factory.person(home)
    audience = {"subject_role": "manager", "raters": {"staff": ["care_worker"]}}
    _, wave = factory.programme([home], [("appraisal_360", audience, None)])
    session.add(_invitation(wave, rater, "t1", manager, "staff"))
    session.add(_invitation(wave, rater, "t2", other_manager, "staff"))
    session.commit()  # two subjects: fine
    session.add(_invitation(wave, rater, "t3", manager, "staff"))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    assert {i.token for i in session.scalars(select(Invitation))} == {"t1", "t2"}


def test_a_subject_needs_a_relation(session, factory):
    home = factory.home()
    manager, rater = factory.person(home, role="manager"), factory.person(home)
    _, wave = factory.programme([home], [("staff_morale", {"roles": ["care_worker"]}, None)])
    session.add(_invitation(wave, rater, "t1", manager, None))
    with pytest.raises(IntegrityError):
        session.commit()


def test_duplicate_answer_is_refused_by_the_database(session, factory):
    home = factory.home()
    worker = factory.person(home)
    _, wave = factory.programme([home], [("staff_morale", {"roles": ["care_worker"]}, "sms")])
    invitation = _invitation(wave, worker, "tok")
    response = Response(invitation=invitation, channel="sms")
    session.add_all(
        [invitation, response, Answer(response=response, item_id="morale", value=3, channel="sms")]
    )
    session.commit()
    session.add(Answer(response=response, item_id="morale", value=4, channel="sms"))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()
    assert [a.value for a in session.scalars(select(Answer))] == [3]
    # and a second response for the same invitation is refused too
    session.add(Response(invitation_id=invitation.id, channel="web"))
    with pytest.raises(IntegrityError):
        session.commit()


def test_duplicate_provider_message_id_is_refused(session, factory):
    person = factory.person()
    for _ in range(2):
        session.add(
            Message(
                direction="in",
                channel="sms",
                person=person,
                to_address="x",
                from_address=person.mobile,
                body="4",
                status="received",
                provider_id="SM" + "a" * 32,
            )
        )
    with pytest.raises(IntegrityError):
        session.commit()


def test_unknown_role_is_refused(session, factory):
    home = factory.home()
    session.add(Person(care_home=home, given_name="A", role="chef", active_from=dt.date.today()))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()


def test_a_mobile_belongs_to_one_person(session, factory):
    home = factory.home()
    first = factory.person(home)
    session.commit()
    session.add(
        Person(
            care_home=home,
            given_name="B",
            role="care_worker",
            mobile=first.mobile,
            active_from=dt.date.today(),
        )
    )
    with pytest.raises(IntegrityError):
        session.commit()


def test_foreign_keys_are_enforced(session, factory):
    session.add(
        Person(
            care_home_id=999_999, given_name="A", role="care_worker", active_from=dt.date.today()
        )
    )
    with pytest.raises(IntegrityError):
        session.commit()


def test_sqlite_runs_in_wal_mode(engine):
    if engine.dialect.name != "sqlite":
        pytest.skip("WAL is a SQLite setting")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_migrations_create_every_model_table(engine):
    from storage.models import Base

    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables
