"""Pulse waves: one wave per occurrence of a repeat, reloaded idempotently; and the
programme settings the clock reads (sending window, leads)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from storage.models import Invitation, Wave, WaveInstrument
from surveys.invitations import open_wave
from surveys.programme import ProgrammeError, load_programme, parse_programme

UTC = dt.UTC
ASK = [{"instrument": "staff_morale", "roles": ["care_worker"], "channel": "sms"}]


def _file(tmp_path: Path, waves: list[dict], **programme) -> Path:
    data = {
        "programme": {"key": "pulse-prog", "name": "Pulse programme", **programme},
        "cohorts": [{"key": "c1", "name": "Cohort 1", "homes": ["Willow Court"], "waves": waves}],
    }
    path = tmp_path / "programme.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _pulse(**overrides) -> dict:
    wave = {
        "key": "pulse",
        "kind": "pulse",
        "name": "Monthly morale",
        "opens": "2026-03-01 09:00",
        "open_for_days": 7,
        "repeat": {"every": "month", "on": "first tuesday", "count": 6},
        "reminders": {"after_days": [2], "max": 1},
        "ask": ASK,
    }
    wave.update(overrides)
    return wave


def _waves(session) -> list[Wave]:
    session.expire_all()
    return session.scalars(select(Wave).order_by(Wave.opens_at)).all()


def test_first_tuesdays_become_six_dated_waves(session, tmp_path):
    load_programme(session, _file(tmp_path, [_pulse()]))
    session.commit()
    waves = _waves(session)
    assert [w.key for w in waves] == [
        "pulse-2026-03-03",
        "pulse-2026-04-07",
        "pulse-2026-05-05",
        "pulse-2026-06-02",
        "pulse-2026-07-07",
        "pulse-2026-08-04",
    ]
    assert {w.kind for w in waves} == {"pulse"}
    assert waves[0].name == "Monthly morale 3 Mar 2026"
    # 09:00 in London: GMT on 3 March, BST from April; open 7 days, to 09:00 local.
    assert waves[0].opens_at == dt.datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    assert waves[0].closes_at == dt.datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    assert waves[1].opens_at == dt.datetime(2026, 4, 7, 8, 0, tzinfo=UTC)
    assert all(w.reminders == {"after_days": [2], "max": 1} for w in waves)
    assert all(len(w.instruments) == 1 for w in waves)


def test_a_wave_open_across_the_clock_change_closes_at_the_same_local_time(session, tmp_path):
    wave = _pulse(opens="2026-03-24 09:00", repeat={"every": "week", "on": "tuesday", "count": 2})
    load_programme(session, _file(tmp_path, [wave]))
    first = _waves(session)[0]
    assert first.opens_at == dt.datetime(2026, 3, 24, 9, 0, tzinfo=UTC)  # GMT
    assert first.closes_at == dt.datetime(2026, 3, 31, 8, 0, tzinfo=UTC)  # 09:00 BST


def test_reloading_changes_nothing(session, tmp_path):
    path = _file(tmp_path, [_pulse()])
    load_programme(session, path)
    session.commit()
    before = [(w.id, w.key, w.opens_at, w.closes_at) for w in _waves(session)]
    instruments = session.scalar(select(func.count()).select_from(WaveInstrument))
    report = load_programme(session, path)
    session.commit()
    assert report.summary() == "programme pulse-prog: no changes"
    assert [(w.id, w.key, w.opens_at, w.closes_at) for w in _waves(session)] == before
    assert session.scalar(select(func.count()).select_from(WaveInstrument)) == instruments


def test_a_shorter_repeat_removes_unused_occurrences_but_keeps_invited_ones(
    session, factory, tmp_path
):
    load_programme(session, _file(tmp_path, [_pulse()]))
    session.commit()
    home = _waves(session)[0].cohort.homes[0]
    factory.person(home)
    june = next(w for w in _waves(session) if w.key == "pulse-2026-06-02")
    assert open_wave(session, june, june.opens_at).created == 1
    session.commit()
    report = load_programme(
        session,
        _file(tmp_path, [_pulse(repeat={"every": "month", "on": "first tuesday", "count": 3})]),
    )
    session.commit()
    assert [w.key for w in _waves(session)] == [
        "pulse-2026-03-03",
        "pulse-2026-04-07",
        "pulse-2026-05-05",
        "pulse-2026-06-02",  # kept: it has invitations
    ]
    assert session.scalar(select(func.count()).select_from(Invitation)) == 1
    summary = report.summary()
    assert "wave c1/pulse-2026-06-02 kept" in summary
    assert "wave c1/pulse-2026-07-07 deleted" in summary


def test_weekly_and_day_of_month_repeats(tmp_path):
    weekly = _pulse(
        key="weekly", opens="2026-03-02 10:30", repeat={"every": "week", "on": "thu", "count": 3}
    )
    monthly = _pulse(
        key="monthly", open_for_days=5, repeat={"every": "month", "on": 15, "count": 2}
    )
    plan = parse_programme(_file(tmp_path, [weekly, monthly]))
    keys = [w["key"] for w in plan["cohorts"][0]["waves"]]
    assert keys == [
        "weekly-2026-03-05",
        "weekly-2026-03-12",
        "weekly-2026-03-19",
        "monthly-2026-03-15",
        "monthly-2026-04-15",
    ]
    assert plan["cohorts"][0]["waves"][0]["opens"] == dt.datetime(2026, 3, 5, 10, 30, tzinfo=UTC)


def _problems(tmp_path: Path, waves: list[dict], **programme) -> str:
    with pytest.raises(ProgrammeError) as caught:
        parse_programme(_file(tmp_path, waves, **programme))
    return str(caught.value)


def test_repeat_mistakes_are_reported_with_their_field_paths(tmp_path):
    where = "cohorts[0].waves[0]"
    cases = [
        (_pulse(kind="baseline"), f"{where}.repeat: only a pulse wave repeats"),
        (_pulse(repeat={"every": "fortnight", "count": 2}), f"{where}.repeat.every: expected"),
        (_pulse(repeat={"every": "month", "count": 0}), f"{where}.repeat.count: expected"),
        (_pulse(repeat={"every": "week", "on": "first tuesday", "count": 2}), "repeat.on:"),
        (_pulse(repeat={"every": "month", "on": "tuesdayish", "count": 2}), "repeat.on:"),
        (_pulse(repeat={"every": "month", "on": 31, "count": 2}), "day 31 is not in every"),
        (_pulse(repeat={"every": "month", "count": 2, "often": 1}), "repeat.often: unknown"),
        (_pulse(open_for_days=None), f"{where}.open_for_days: a repeating wave needs"),
        (_pulse(open_for_days=-1), f"{where}.open_for_days: expected a positive"),
        (_pulse(closes="2026-03-09 09:00"), f"{where}.closes: give closes or open_for_days"),
        (
            _pulse(open_for_days=10, repeat={"every": "week", "count": 2}),
            "make open_for_days shorter",
        ),
        (_pulse(key="k" * 60), "too long for dated occurrences"),
    ]
    for wave, expected in cases:
        if wave.get("open_for_days") is None:
            wave.pop("open_for_days")
        assert expected in _problems(tmp_path, [wave]), expected


def test_dated_keys_must_not_clash_with_another_wave(tmp_path):
    clash = {**_pulse(), "key": "pulse-2026-03-03", "kind": "baseline"}
    clash.pop("repeat")
    assert "'pulse-2026-03-03' appears more than once" in _problems(tmp_path, [_pulse(), clash])


def test_sending_window_and_leads_are_programme_settings(session, tmp_path):
    path = _file(
        tmp_path,
        [_pulse()],
        send_window={"start": "08:30", "end": "19:00"},
        leads=["Lead@Example.org", "second@example.org"],
    )
    # Unquoted in YAML, 19:00 is read as a number (1140 minutes): it still means 19:00.
    path.write_text(path.read_text().replace("'19:00'", "19:00"), encoding="utf-8")
    load_programme(session, path)
    programme = _waves(session)[0].cohort.programme
    assert programme.settings["send_window"] == {"start": "08:30", "end": "19:00"}
    assert programme.settings["leads"] == ["Lead@example.org", "second@example.org"]


def test_bad_sending_window_and_leads_name_the_field(tmp_path):
    text = _problems(
        tmp_path,
        [_pulse()],
        send_window={"start": "20:00", "end": "09:00", "tz": "x"},
        leads=["not-an-email", 5],
    )
    assert "programme.send_window.end: must be after start" in text
    assert "programme.send_window.tz: unknown field" in text
    assert "programme.leads[0]: 'not-an-email' is not an email address" in text
    assert "programme.leads[1]: expected an email address" in text
    assert "programme.send_window: expected a mapping" in _problems(
        tmp_path, [_pulse()], send_window="9-5"
    )
    assert "programme.leads: expected a list" in _problems(tmp_path, [_pulse()], leads="a@b.org")
