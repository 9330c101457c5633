"""The weekly management-information email: counts by wave and home, suppression, no
names, sent to the programme leads and stored."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from bot.cli import cli
from bot.transports import DevMailbox, SendError
from bot.weekly_mail import compose, send_weekly_mail
from reports.weekly import ALL_HOMES, weekly_figures
from storage.models import Invitation, Message
from surveys.answers import complete_response
from surveys.invitations import open_wave, set_status

UTC = dt.UTC
OPENS = dt.datetime(2027, 1, 4, 9, 0, tzinfo=UTC)  # a Monday
MONDAY = dt.datetime(2027, 1, 11, 8, 0, tzinfo=UTC)  # the next Monday, 08:00 GMT
LEADS = ["lead@example.org", "deputy.lead@example.org"]


def _programme(session, factory, sizes: dict[str, int], completed: dict[str, tuple[int, int]]):
    """Homes of `sizes` care workers; `completed[home]` = (before the week, in the week)."""
    homes = {name: factory.home(name) for name in sizes}
    people = {name: [factory.person(homes[name]) for _ in range(n)] for name, n in sizes.items()}
    programme, wave = factory.programme(
        list(homes.values()),
        [("staff_morale", {"roles": ["care_worker"]}, "sms")],
        opens=OPENS - dt.timedelta(days=7),
        closes=OPENS + dt.timedelta(days=14),
    )
    programme.settings = {"leads": list(LEADS)}
    open_wave(session, wave, wave.opens_at)
    for name, (earlier, this_week) in completed.items():
        invitations = [
            session.scalars(select(Invitation).where(Invitation.person_id == p.id)).one()
            for p in people[name]
        ]
        for index, invitation in enumerate(invitations):
            set_status(invitation, "sent", wave.opens_at)
            if index < earlier:
                complete_response(session, invitation, OPENS - dt.timedelta(days=2))
            elif index < earlier + this_week:
                complete_response(session, invitation, OPENS + dt.timedelta(days=3))
    session.commit()
    return programme, wave, people


def _rows(figures):
    return {(r.wave_key, r.home): r for r in figures.rows}


def test_counts_by_home_and_wave_with_small_homes_suppressed(session, factory):
    programme, wave, _ = _programme(
        session,
        factory,
        {"Willow Court": 8, "Elmfield House": 3, "Harrow Lodge": 2},
        {"Willow Court": (2, 3), "Elmfield House": (1, 1)},
    )
    figures = weekly_figures(session, programme.key, MONDAY)
    rows = _rows(figures)
    willow = rows[("baseline", "Willow Court")]
    assert (willow.invited, willow.completed, willow.completed_this_week) == (8, 5, 3)
    assert willow.rate == pytest.approx(5 / 8) and willow.still_to_answer == 3
    for home in ("Elmfield House", "Harrow Lodge"):  # 3 and 2 people: under 5
        row = rows[("baseline", home)]
        assert row.suppressed and row.invited is row.completed is row.still_to_answer is None
    total = rows[("baseline", ALL_HOMES)]
    # The suppressed homes hold 5 people between them: the total cannot give one away.
    assert (total.invited, total.completed, total.still_to_answer) == (13, 7, 6)


def test_the_total_is_suppressed_when_it_would_reveal_one_small_home(session, factory):
    programme, *_ = _programme(
        session, factory, {"Willow Court": 8, "Harrow Lodge": 2}, {"Willow Court": (1, 1)}
    )
    rows = _rows(weekly_figures(session, programme.key, MONDAY))
    assert rows[("baseline", "Harrow Lodge")].suppressed
    assert rows[("baseline", ALL_HOMES)].suppressed  # 10 - 8 would give Harrow Lodge away
    assert not rows[("baseline", "Willow Court")].suppressed


def test_only_waves_open_during_the_week_and_still_to_answer_only_while_open(session, factory):
    programme, wave, _ = _programme(session, factory, {"Willow Court": 6}, {})
    assert weekly_figures(session, programme.key, wave.opens_at).rows == []  # not yet open
    later = wave.closes_at + dt.timedelta(days=3)
    [row, _total] = weekly_figures(session, programme.key, later).rows
    assert not row.wave_open and row.still_to_answer is None and row.invited == 6
    assert weekly_figures(session, programme.key, wave.closes_at + dt.timedelta(days=8)).rows == []


def test_the_email_has_counts_and_no_names(session, factory):
    programme, _, people = _programme(
        session,
        factory,
        {"Willow Court": 8, "Harrow Lodge": 2},
        {"Willow Court": (2, 3)},
    )
    text = compose(weekly_figures(session, programme.key, MONDAY))
    assert text.subject == f"{programme.name}: weekly survey figures to 11 January 2027"
    body = text.body
    assert "Monday 11 January 2027, 08:00 (Europe/London)" in body
    assert "fewer than 5 people" in body
    rates, waiting = body.split("People still to answer, by wave")
    lines = [line.split() for line in rates.splitlines() if line.startswith("  ")]
    assert ["Willow", "Court", "8", "5", "62%", "3"] in lines
    assert ["Harrow", "Lodge", *["suppressed"] * 4] in lines
    assert ["All", "homes", *["suppressed"] * 4] in lines
    lines = [line.split() for line in waiting.splitlines() if line.startswith("  ")]
    assert lines == [["Harrow", "Lodge", "suppressed"], ["Willow", "Court", "3"],
                     ["All", "homes", "suppressed"]]  # fmt: skip
    for person in [p for group in people.values() for p in group]:
        for detail in (person.given_name, person.family_name, person.mobile, person.email):
            assert detail not in body and detail not in text.html
    assert "<table" in text.html and "Willow Court" in text.html


def test_html_escapes_names_of_homes_and_programme(session, factory):
    programme, *_ = _programme(session, factory, {"<b>Oak & Ash</b>": 6}, {})
    programme.name = "A <i>programme</i>"
    session.commit()
    text = compose(weekly_figures(session, programme.key, MONDAY))
    assert "<b>Oak" not in text.html and "&lt;b&gt;Oak &amp; Ash&lt;/b&gt;" in text.html
    assert "A &lt;i&gt;programme&lt;/i&gt;" in text.html


def test_it_is_sent_to_each_lead_and_stored(session, factory, app):
    programme, *_ = _programme(session, factory, {"Willow Court": 6}, {"Willow Court": (3, 0)})
    settings = app.config["CAREPULSE"]
    report = send_weekly_mail(session, settings, DevMailbox(), programme.key, MONDAY)
    session.commit()
    stored = session.scalars(select(Message).where(Message.channel == "email")).all()
    assert sorted(m.to_address for m in stored) == sorted(LEADS)
    for message in stored:
        assert message.direction == "out" and message.status == "delivered"
        assert message.provider_id and message.person_id is None
        assert message.subject.endswith("weekly survey figures to 11 January 2027")
        assert "Willow Court" in message.body and message.created_at == MONDAY
    assert len(report.messages) == 2
    # The clock's job sends it once a week, however many clocks run.
    again = send_weekly_mail(
        session, settings, DevMailbox(), programme.key, MONDAY, once_a_week=True
    )
    assert again.messages == [] and sorted(again.skipped) == sorted(LEADS)


class _Refusing:
    name = "refusing"

    def send_email(self, to, subject, body, html=None, headers=None):
        raise SendError("550 no such user", "550", permanent=True)


def test_a_refused_email_is_stored_as_failed(session, factory, app):
    programme, *_ = _programme(session, factory, {"Willow Court": 6}, {})
    report = send_weekly_mail(session, app.config["CAREPULSE"], _Refusing(), programme.key, MONDAY)
    assert [m.status for m in report.messages] == ["failed", "failed"]
    assert report.messages[0].error_code == "550"


def test_weekly_mail_command_sends_now(runner, session, factory, time_machine):
    time_machine.move_to(MONDAY, tick=False)
    programme, *_ = _programme(session, factory, {"Willow Court": 6}, {"Willow Court": (2, 2)})
    result = runner.invoke(cli, ["weekly-mail", "--programme", programme.key])
    assert result.exit_code == 0, result.output
    assert "lead@example.org (delivered)" in result.output
    session.expire_all()
    [mail, _] = session.scalars(select(Message).order_by(Message.to_address.desc())).all()
    assert "Willow Court" in mail.body and "4" in mail.body


def test_weekly_mail_command_without_leads_says_so(runner, session, factory):
    programme, *_ = _programme(session, factory, {"Willow Court": 6}, {})
    programme.settings = {}
    session.commit()
    result = runner.invoke(cli, ["weekly-mail"])
    assert result.exit_code == 1
    assert "no leads set" in result.output
