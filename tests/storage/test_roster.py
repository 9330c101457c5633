"""Roster import: what a programme lead sees after uploading a staff list."""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import CareHome, Person
from storage.roster import RosterError, RosterProblem, import_roster, parse_roster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "roster.csv"
HEADER = [
    "care_home",
    "external_id",
    "given_name",
    "family_name",
    "role",
    "mobile",
    "email",
]
DAY_ONE = dt.date(2025, 1, 6)
DAY_TWO = dt.date(2025, 3, 3)


def staff_rows(count: int = 20) -> list[list[Any]]:
    """`count` valid rows over two homes; each home's first row is a manager with email."""
    rows = []
    for i in range(count):
        home = "Willow Court" if i < count // 2 else "Elmfield House"
        manager = i in (0, count // 2)
        rows.append(
            [
                home,
                f"S{i:03d}",
                f"Given{i}",
                f"Family{i}",
                "Registered Manager" if manager else "Carer",
                f"07700 900{i:03d}",
                f"person{i}@carehome.example" if manager or i % 3 == 0 else "",
            ]
        )
    return rows


def bad_rows() -> list[list[Any]]:
    return [
        ["Willow Court", "B001", "Bad", "Mobile", "carer", "07700 12", ""],
        ["Willow Court", "B002", "Bad", "Email", "carer", "07700 900501", "not-an-email"],
        ["Elmfield House", "B003", "Bad", "Role", "gardener", "07700 900502", ""],
    ]


def write_csv(path: Path, rows: list[list[Any]], header: list[str] = HEADER, **kw: Any) -> Path:
    encoding = kw.pop("encoding", "utf-8")
    with path.open("w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_xlsx(path: Path, rows: list[list[Any]], header: list[str] = HEADER) -> Path:
    workbook = Workbook()
    sheet = workbook.active
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    workbook.save(path)
    return path


def people(session: Session) -> list[Person]:
    return list(session.scalars(select(Person).order_by(Person.external_id)))


def by_line(problems: list[RosterProblem]) -> dict[int, list[RosterProblem]]:
    found: dict[int, list[RosterProblem]] = {}
    for problem in problems:
        found.setdefault(problem.line, []).append(problem)
    return found


def mixed_rows() -> list[list[Any]]:
    """20 valid rows with the 3 bad ones at spreadsheet lines 5, 12 and 19."""
    rows = staff_rows()
    bad = bad_rows()
    rows.insert(3, bad[0])  # line 5
    rows.insert(10, bad[1])  # line 12
    rows.insert(17, bad[2])  # line 19
    return rows


def assert_three_bad_lines(problems: list[RosterProblem]) -> None:
    found = by_line(problems)
    assert sorted(found) == [5, 12, 19]
    assert [(p.column, p.value) for p in found[5]] == [("mobile", "07700 12")]
    assert [(p.column, p.value) for p in found[12]] == [("email", "not-an-email")]
    assert [(p.column, p.value) for p in found[19]] == [("role", "gardener")]
    assert "not a valid email address" in found[12][0].reason
    assert "not a known role" in found[19][0].reason
    assert str(found[19][0]).startswith('line 19, column "role": "gardener" is not a known role')


@pytest.mark.parametrize("kind", ["csv", "xlsx"])
def test_any_bad_row_imports_nothing_and_names_every_line(
    session: Session, tmp_path: Path, kind: str
) -> None:
    rows = mixed_rows()
    if kind == "xlsx":
        rows[0][5] = 7700900000  # typed into Excel as a number: the leading zero is gone
        path = write_xlsx(tmp_path / "roster.xlsx", rows)
    else:
        path = write_csv(tmp_path / "roster.csv", rows)

    report = import_roster(session, path, today=DAY_ONE)

    assert not report.imported
    assert_three_bad_lines(report.problems)
    assert report.created == 0
    assert not session.new and not session.dirty
    assert people(session) == []
    assert session.scalars(select(CareHome)).all() == []
    assert "Nothing was imported" in report.summary()


@pytest.mark.parametrize("kind", ["csv", "xlsx"])
def test_skip_invalid_imports_exactly_the_good_rows(
    session: Session, tmp_path: Path, kind: str
) -> None:
    rows = mixed_rows()
    if kind == "xlsx":
        rows[0][5] = 7700900000
        path = write_xlsx(tmp_path / "roster.xlsx", rows)
    else:
        path = write_csv(tmp_path / "roster.csv", rows)

    report = import_roster(session, path, skip_invalid=True, today=DAY_ONE)
    session.commit()

    assert report.imported
    assert (report.created, report.skipped) == (20, 3)
    assert_three_bad_lines(report.problems)
    stored = people(session)
    assert [p.external_id for p in stored] == [f"S{i:03d}" for i in range(20)]
    assert stored[0].mobile == "+447700900000"
    assert stored[0].role == "manager" and stored[1].role == "care_worker"
    assert {p.care_home.name for p in stored} == {"Willow Court", "Elmfield House"}
    assert all(p.active_from == DAY_ONE and p.active_to is None for p in stored)
    assert "3 rows with problems were skipped" in report.summary()


def test_reimporting_the_same_file_changes_nothing(session: Session, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "roster.csv", staff_rows())
    first = import_roster(session, path, today=DAY_ONE)
    session.commit()
    assert first.created == 20
    stamps = {p.id: p.updated_at for p in people(session)}

    again = import_roster(session, path, today=DAY_TWO)
    assert not session.dirty
    session.commit()
    session.expire_all()

    assert again.imported
    assert (again.created, again.updated, again.left, again.reactivated) == (0, 0, 0, 0)
    assert again.unchanged == 20
    assert {p.id: p.updated_at for p in people(session)} == stamps


def test_changed_file_updates_matches_and_marks_leavers(session: Session, tmp_path: Path) -> None:
    rows = staff_rows()
    other_home = ["Harrow Lodge", "H001", "Olu", "Ade", "manager", "07700 900900", "o@h.example"]
    import_roster(session, write_csv(tmp_path / "one.csv", rows), today=DAY_ONE)
    import_roster(session, write_csv(tmp_path / "h.csv", [other_home]), today=DAY_ONE)
    session.commit()

    changed = [list(row) for row in rows[:10]]  # Willow Court only
    changed[1][5] = "07700 900888"  # S001 has a new mobile
    changed[2][1] = ""  # S002 without a staff number: found by mobile
    changed[2][2] = "Renamed"
    del changed[3]  # S003 has left
    report = import_roster(session, write_csv(tmp_path / "two.csv", changed), today=DAY_TWO)
    session.commit()

    assert report.imported and report.problems == []
    assert (report.created, report.updated, report.unchanged, report.left) == (0, 2, 7, 1)
    found = {p.external_id: p for p in people(session)}
    assert len(found) == 21
    assert found["S001"].mobile == "+447700900888"
    assert found["S002"].given_name == "Renamed"
    assert found["S003"].active_to == DAY_TWO
    assert report.leavers == ["Given3 Family3 (Willow Court)"]
    others = [p for p in found.values() if p.care_home.name != "Willow Court"]
    assert len(others) == 11
    assert all(p.active_to is None for p in others)


def test_a_leaver_who_comes_back_is_reactivated(session: Session, tmp_path: Path) -> None:
    rows = staff_rows(6)
    import_roster(session, write_csv(tmp_path / "a.csv", rows), today=DAY_ONE)
    import_roster(session, write_csv(tmp_path / "b.csv", rows[:2]), today=DAY_TWO)
    session.commit()
    assert session.scalar(select(Person).where(Person.external_id == "S002")).active_to == DAY_TWO

    later = DAY_TWO + dt.timedelta(days=30)
    report = import_roster(session, write_csv(tmp_path / "c.csv", rows[:3]), today=later)
    session.commit()

    assert report.reactivated == 1
    person = session.scalar(select(Person).where(Person.external_id == "S002"))
    assert person.active_to is None
    assert person.is_active_on(later)
    assert session.scalar(select(func.count()).select_from(Person)) == 6


def one_problem(session: Session, path: Path) -> RosterProblem:
    report = import_roster(session, path, today=DAY_ONE)
    assert not report.imported
    assert people(session) == []
    assert len(report.problems) == 1, report.problems
    return report.problems[0]


def test_landline_is_refused(session: Session, tmp_path: Path) -> None:
    rows = staff_rows(2)
    rows[1][5] = "0207 946 0000"
    problem = one_problem(session, write_csv(tmp_path / "r.csv", rows))
    assert str(problem) == (
        'line 3, column "mobile": "0207 946 0000" is a landline, not a mobile number'
    )


def test_manager_without_email_is_refused(session: Session, tmp_path: Path) -> None:
    rows = staff_rows(2)
    rows[0][6] = ""
    problem = one_problem(session, write_csv(tmp_path / "r.csv", rows))
    assert (problem.line, problem.column) == (2, "email")
    assert "manager needs an email" in problem.reason


def test_person_with_neither_mobile_nor_email_is_refused(session: Session, tmp_path: Path) -> None:
    rows = staff_rows(3)
    rows[2][5] = rows[2][6] = ""
    problem = one_problem(session, write_csv(tmp_path / "r.csv", rows))
    assert problem.line == 4
    assert "cannot be invited" in str(problem)


def test_duplicate_external_id_names_both_lines(session: Session, tmp_path: Path) -> None:
    rows = staff_rows(5)
    rows[4][1] = rows[1][1]
    report = import_roster(session, write_csv(tmp_path / "r.csv", rows), today=DAY_ONE)
    assert not report.imported and people(session) == []
    assert [(p.line, p.column, p.value) for p in report.problems] == [
        (3, "external_id", "S001"),
        (6, "external_id", "S001"),
    ]
    assert "line 6" in report.problems[0].reason and "line 3" in report.problems[1].reason


def test_duplicate_mobile_names_both_lines(session: Session, tmp_path: Path) -> None:
    rows = staff_rows(4)
    rows[3][5] = "+44 7700 900001"
    report = import_roster(session, write_csv(tmp_path / "r.csv", rows), today=DAY_ONE)
    assert [(p.line, p.column) for p in report.problems] == [(3, "mobile"), (5, "mobile")]


def test_unknown_column_is_refused(session: Session, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", [row + ["x"] for row in staff_rows(2)], HEADER + ["NI"])
    report = import_roster(session, path, skip_invalid=True, today=DAY_ONE)
    assert not report.imported and people(session) == []
    assert [(p.line, p.column) for p in report.problems] == [(1, "NI")]
    assert "not a known column" in str(report.problems[0])


def test_missing_required_column_is_refused(tmp_path: Path) -> None:
    header = [h for h in HEADER if h != "role"]
    rows = [[v for h, v in zip(HEADER, row, strict=True) if h != "role"] for row in staff_rows(2)]
    parsed = parse_roster(write_csv(tmp_path / "r.csv", rows, header))
    assert parsed.fatal
    assert [(p.line, p.column) for p in parsed.problems] == [(1, "role")]


def test_headers_are_forgiving(tmp_path: Path) -> None:
    header = [
        "  Care Home",
        "External-ID",
        "GIVEN NAME",
        "family_name",
        "Role",
        "Mobile",
        " EMAIL ",
    ]
    parsed = parse_roster(write_csv(tmp_path / "r.csv", staff_rows(2), header))
    assert parsed.ok and len(parsed.rows) == 2


def test_cp1252_csv_is_read_and_reported(session: Session, tmp_path: Path) -> None:
    rows = staff_rows(2)
    rows[1][2] = "Siân"
    path = write_csv(tmp_path / "r.csv", rows, encoding="cp1252")
    report = import_roster(session, path, today=DAY_ONE)
    assert report.imported and report.encoding == "cp1252"
    assert "Windows-1252" in report.summary()
    assert session.scalar(select(Person.given_name).where(Person.external_id == "S001")) == "Siân"


def test_embedded_newline_keeps_line_numbers(tmp_path: Path) -> None:
    rows = staff_rows(4)
    rows[1][3] = "Smith\nJones"  # one record on lines 3 and 4
    rows[2][5] = "not a phone"  # starts on physical line 5
    path = write_csv(tmp_path / "r.csv", rows)
    parsed = parse_roster(path)
    assert [(p.line, p.column) for p in parsed.problems] == [(5, "mobile")]
    assert [r.line for r in parsed.rows] == [2, 3, 6]
    assert parsed.rows[1].family_name == "Smith Jones"


def test_blank_rows_are_skipped_and_xlsx_lines_are_sheet_rows(tmp_path: Path) -> None:
    rows: list[list[Any]] = staff_rows(3)
    rows.insert(1, [None] * len(HEADER))
    rows[3][4] = "astronaut"
    parsed = parse_roster(write_xlsx(tmp_path / "r.xlsx", rows))
    assert [r.line for r in parsed.rows] == [2, 4]
    assert [(p.line, p.column) for p in parsed.problems] == [(5, "role")]


def test_mobile_of_another_person_is_a_problem_not_a_database_error(
    session: Session, tmp_path: Path
) -> None:
    import_roster(session, write_csv(tmp_path / "a.csv", staff_rows(3)), today=DAY_ONE)
    session.commit()
    newcomer = ["Harrow Lodge", "X9", "New", "Person", "carer", "07700900001", ""]
    report = import_roster(session, write_csv(tmp_path / "b.csv", [newcomer]), today=DAY_ONE)
    assert not report.imported
    assert [(p.line, p.column) for p in report.problems] == [(2, "mobile")]
    assert "already belongs to Given1 Family1" in report.problems[0].reason
    assert session.scalar(select(func.count()).select_from(Person)) == 3


@pytest.mark.parametrize("name", ["roster.xls", "roster.ods", "roster.txt"])
def test_other_formats_raise_roster_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\xd0\xcf\x11\xe0 not really")
    with pytest.raises(RosterError, match="CSV"):
        parse_roster(path)


def test_unreadable_xlsx_raises_roster_error(tmp_path: Path) -> None:
    path = tmp_path / "roster.xlsx"
    path.write_text("care_home,given_name\n")
    with pytest.raises(RosterError, match="xlsx"):
        parse_roster(path)


def test_example_roster_imports_without_problems(session: Session) -> None:
    report = import_roster(session, EXAMPLE, today=DAY_ONE)
    session.commit()
    assert report.problems == [] and report.imported
    homes = {h.name: h for h in session.scalars(select(CareHome))}
    assert set(homes) == {"Willow Court", "Elmfield House", "Harrow Lodge"}
    stored = people(session)
    assert len(stored) == report.created
    roles = [p.role for p in stored]
    assert roles.count("manager") == 3 and roles.count("proprietor") == 1
    assert all(p.email for p in stored if p.role in ("manager", "proprietor"))
    assert all(p.mobile and p.mobile.startswith("+447700900") for p in stored)


def test_skipped_row_of_an_existing_person_does_not_mark_them_left(
    session: Session, tmp_path: Path
) -> None:
    rows = staff_rows(4)
    import_roster(session, write_csv(tmp_path / "a.csv", rows), today=DAY_ONE)
    session.commit()
    rows[2][6] = "typo@@example"
    report = import_roster(
        session, write_csv(tmp_path / "b.csv", rows), skip_invalid=True, today=DAY_TWO
    )
    session.commit()
    assert (report.skipped, report.left, report.unchanged) == (1, 0, 3)
    assert all(p.active_to is None for p in people(session))


def test_two_people_can_swap_mobiles(session: Session, tmp_path: Path) -> None:
    rows = staff_rows(3)
    import_roster(session, write_csv(tmp_path / "a.csv", rows), today=DAY_ONE)
    session.commit()
    rows[1][5], rows[2][5] = rows[2][5], rows[1][5]
    report = import_roster(session, write_csv(tmp_path / "b.csv", rows), today=DAY_TWO)
    session.commit()
    assert report.problems == [] and report.updated == 2
    found = {p.external_id: p.mobile for p in people(session)}
    assert (found["S001"], found["S002"]) == ("+447700900002", "+447700900001")
