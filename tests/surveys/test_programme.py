"""Programme files: loaded idempotently, validated with field paths."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from storage.models import CareHome, Cohort, InstrumentVersion, Programme, Wave, WaveInstrument
from surveys.programme import ProgrammeError, load_programme, parse_programme

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "programme.yaml"


def _count(session, model):
    return session.scalar(select(func.count()).select_from(model))


def test_example_programme_loads(session):
    report = load_programme(session, EXAMPLE)
    session.commit()
    programme = session.scalar(select(Programme))
    assert programme.key == "nwl-leadership-2027"
    assert programme.anonymity_threshold == 5
    cohort = programme.cohorts[0]
    assert sorted(h.name for h in cohort.homes) == [
        "Elmfield House",
        "Harrow Lodge",
        "Willow Court",
    ]
    assert [w.key for w in cohort.waves] == ["baseline", "end"]
    baseline = cohort.waves[0]
    # 09:00 in London in January is 09:00 UTC; in July (BST) 09:00 is 08:00 UTC.
    assert baseline.opens_at == dt.datetime(2027, 1, 4, 9, 0, tzinfo=dt.UTC)
    assert cohort.waves[1].opens_at == dt.datetime(2027, 7, 12, 8, 0, tzinfo=dt.UTC)
    assert baseline.reminders == {"after_days": [2, 5], "max": 2}
    asks = {wi.instrument_version.instrument.key: wi for wi in baseline.instruments}
    assert set(asks) == {"manager_self_report", "appraisal_360", "staff_morale"}
    assert asks["staff_morale"].channel == "sms"
    assert asks["appraisal_360"].audience["raters"]["line_manager"] == ["proprietor"]
    assert "created programme nwl-leadership-2027" in report.summary()


def test_loading_twice_changes_nothing(session):
    load_programme(session, EXAMPLE)
    session.commit()
    counts = [
        _count(session, m)
        for m in (Programme, Cohort, CareHome, Wave, WaveInstrument, InstrumentVersion)
    ]
    report = load_programme(session, EXAMPLE)
    session.commit()
    assert report.created == [] and report.updated == []
    assert report.summary() == "programme nwl-leadership-2027: no changes"
    assert [
        _count(session, m)
        for m in (Programme, Cohort, CareHome, Wave, WaveInstrument, InstrumentVersion)
    ] == counts


def test_an_edited_file_updates_what_it_names(session, tmp_path):
    load_programme(session, EXAMPLE)
    session.commit()
    data = yaml.safe_load(EXAMPLE.read_text())
    data["cohorts"][0]["waves"][0]["closes"] = "2027-01-29 20:00"
    edited = tmp_path / "p.yaml"
    edited.write_text(yaml.safe_dump(data))
    report = load_programme(session, edited)
    session.commit()
    wave = session.scalar(select(Wave).where(Wave.key == "baseline"))
    assert wave.closes_at == dt.datetime(2027, 1, 29, 20, 0, tzinfo=dt.UTC)
    assert any("wave cohort-1/baseline" in line for line in report.updated)
    assert _count(session, Wave) == 2


def _write(tmp_path, data) -> Path:
    path = tmp_path / "programme.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_problem_is_reported_with_its_field_path(tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text())
    wave = data["cohorts"][0]["waves"][0]
    wave["kind"] = "middle"
    wave["closes"] = "2026-12-01 09:00"
    wave["ask"][0]["instrument"] = "wellbeing_survey"
    wave["ask"][2]["roles"] = ["care_worker", "chef"]
    wave["colour"] = "blue"
    with pytest.raises(ProgrammeError) as caught:
        parse_programme(_write(tmp_path, data))
    message = str(caught.value)
    assert "cohorts[0].waves[0].kind: 'middle' is not one of" in message
    assert "cohorts[0].waves[0].closes: must be after opens" in message
    assert "cohorts[0].waves[0].ask[0].instrument: unknown instrument 'wellbeing_survey'" in message
    assert "cohorts[0].waves[0].ask[2].roles: unknown role(s) ['chef']" in message
    assert "cohorts[0].waves[0].colour: unknown field" in message
    assert len(caught.value.problems) == 5


def test_bad_dates_and_missing_fields(tmp_path):
    data = {
        "programme": {"key": "Bad Key"},
        "cohorts": [
            {
                "key": "c1",
                "homes": [],
                "waves": [
                    {
                        "key": "b",
                        "kind": "baseline",
                        "opens": "next monday",
                        "closes": "2027-01-01 09:00",
                        "ask": [],
                    }
                ],
            }
        ],
    }
    with pytest.raises(ProgrammeError) as caught:
        parse_programme(_write(tmp_path, data))
    message = str(caught.value)
    assert "programme.key: 'Bad Key' must be lower-case" in message
    assert "programme.name: missing" in message
    assert "cohorts[0].name: missing" in message
    assert "cohorts[0].waves[0].opens: 'next monday' is not a date-time" in message


def test_a_signpost_longer_than_one_text_is_refused(tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text())
    data["programme"]["signposts"][0]["message"] = "Please look after yourself. " * 8
    data["programme"]["signposts"][1]["item"] = "happiness"
    with pytest.raises(ProgrammeError) as caught:
        parse_programme(_write(tmp_path, data))
    message = str(caught.value)
    assert "programme.signposts[0].message: signpost 'low-morale': the message must be" in message
    assert "programme.signposts[1].item: manager_self_report has no item 'happiness'" in message


def test_not_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("programme: [unclosed")
    with pytest.raises(ProgrammeError, match="not valid YAML"):
        parse_programme(path)


def test_failed_load_writes_nothing(session, tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text())
    data["cohorts"][0]["waves"][1]["kind"] = "finale"
    with pytest.raises(ProgrammeError):
        load_programme(session, _write(tmp_path, data))
    session.rollback()
    assert _count(session, Programme) == 0


def test_min_raters_default_and_override(session, tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text())
    plan = parse_programme(_write(tmp_path, data))
    assert plan["settings"]["min_raters"] == {"staff": 5, "peer": 3, "line_manager": 1}
    data["programme"]["min_raters"] = {"staff": 4, "boss": 1, "peer": 0}
    with pytest.raises(ProgrammeError) as caught:
        parse_programme(_write(tmp_path, data))
    assert "programme.min_raters.boss: unknown relation" in str(caught.value)
    assert "programme.min_raters.peer: expected a whole number >= 1" in str(caught.value)
    data["programme"]["min_raters"] = {"staff": 4}
    load_programme(session, _write(tmp_path, data))
    programme = session.scalar(select(Programme))
    assert programme.settings["min_raters"]["staff"] == 4
