"""The `carepulse` command as a programme lead uses it."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from sqlalchemy import func, select

from bot.cli import cli
from storage import db as storage_db
from storage.models import Invitation, Message, Person, Programme


def _fresh(session):
    """End the test's transaction and forget loaded rows, to see what the app committed."""
    session.rollback()
    session.expire_all()


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _count(session, model):
    _fresh(session)
    return session.scalar(select(func.count()).select_from(model))


def test_db_current_names_both_revisions(runner):
    result = runner.invoke(cli, ["db", "current"])
    assert result.exit_code == 0
    head = storage_db.head_revision()
    assert f"current: {head}; newest: {head}" in result.output


def test_import_roster_then_load_programme_then_send(runner, session):
    result = runner.invoke(cli, ["import-roster", str(EXAMPLES / "roster.csv")])
    assert result.exit_code == 0, result.output
    people = _count(session, Person)
    assert people > 20
    again = runner.invoke(cli, ["import-roster", str(EXAMPLES / "roster.csv")])
    assert again.exit_code == 0 and _count(session, Person) == people

    loaded = runner.invoke(cli, ["load-programme", str(EXAMPLES / "programme.yaml")])
    assert loaded.exit_code == 0, loaded.output
    assert "created programme nwl-leadership-2027" in loaded.output
    assert _count(session, Programme) == 1

    # The sample's waves are in 2027: nothing is due yet, and nothing is sent.
    due = runner.invoke(cli, ["send-due"])
    assert due.exit_code == 0, due.output
    assert "waves opened: 0" in due.output
    assert _count(session, Invitation) == 0 and _count(session, Message) == 0

    report = runner.invoke(cli, ["report"])
    assert report.exit_code == 0, report.output
    assert "Programme nwl-leadership-2027" in report.output


def test_bad_roster_exits_1_names_every_line_and_imports_nothing(runner, session, tmp_path):
    path = tmp_path / "roster.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["care_home", "given_name", "role", "mobile", "email"])
        writer.writerow(["Willow Court", "Ann", "care_worker", "07700 900001", ""])
        writer.writerow(["Willow Court", "Bo", "care_worker", "12345", ""])
        writer.writerow(["Willow Court", "Cy", "chef", "07700 900003", ""])
    result = runner.invoke(cli, ["import-roster", str(path)])
    assert result.exit_code == 1
    assert 'line 3, column "mobile"' in result.output
    assert 'line 4, column "role"' in result.output
    assert _count(session, Person) == 0
    skipped = runner.invoke(cli, ["import-roster", "--skip-invalid", str(path)])
    assert skipped.exit_code == 0, skipped.output
    assert _count(session, Person) == 1


def test_bad_programme_file_exits_with_the_field_path(runner, session, tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text((EXAMPLES / "programme.yaml").read_text().replace("kind: end", "kind: fin"))
    result = runner.invoke(cli, ["load-programme", str(path)])
    assert result.exit_code == 1
    assert "cohorts[0].waves[1].kind: 'fin' is not one of" in result.output
    assert _count(session, Programme) == 0


def test_missing_file_is_a_clear_error(runner):
    result = runner.invoke(cli, ["import-roster", "/nonexistent/roster.csv"])
    assert result.exit_code != 0
    assert "/nonexistent/roster.csv" in result.output
    assert "Traceback" not in result.output


def test_report_without_programmes_says_so(runner):
    result = runner.invoke(cli, ["report"])
    assert result.exit_code == 1
    assert "none loaded" in result.output


def test_demo_runs_a_whole_cycle_and_prints_results(runner):
    result = runner.invoke(cli, ["demo"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Baseline (before the programme)" in out and "End of programme" in out
    assert "Response rates by wave and instrument" in out
    assert "staff_morale" in out and "response_rate" in out
    # the three managers' self-reports are fewer than the threshold of 5: suppressed
    assert "manager_self_report: 15 item(s) suppressed" in out
    # staff ratings of their managers are matched and reported with numbers
    assert re.search(r"^\s*appraisal_360\s+staff\s+item\s+\w+\s+\d+\s+\d", out, re.MULTILINE)
