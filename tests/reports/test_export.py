"""Report files: CSV and XLSX that a spreadsheet opens without running anything in them,
and the pseudonymised wide file of answers."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac

import pandas as pd
import pytest
from openpyxl import load_workbook
from sqlalchemy import select

from reports.disclosure import SUPPRESSED
from reports.export import (
    ABOUT_SHEET,
    WIDE_ANSWERS_COLUMNS,
    neutralise,
    pseudonym,
    sheet_names,
    wide_answers,
    write_csv,
    write_workbook,
)
from reports.frames import answers_frame, items_frame
from storage.models import Invitation
from surveys.answers import complete_response, record_answer
from surveys.invitations import open_wave

KEY = b"a pseudonym key for the tests, 32+"
OTHER_KEY = b"another key entirely, also long!!"

# Each cell a spreadsheet would run, with what the export must show instead.
DANGEROUS = {
    '=HYPERLINK("http://evil.example","x")': '\'=HYPERLINK("http://evil.example","x")',
    "+1+1": "'+1+1",
    "-2+3+cmd|' /C calc'!A0": "'-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0": "'@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1": "'\t=1+1",
    "\r=1+1": "'\r=1+1",
    "   =1+1": "'   =1+1",
    "\uff1d1+1": "'\uff1d1+1",
}
SAFE = ["Willow Court", SUPPRESSED, "a=b", "care_worker", "Ty Gwyn – Pen-y-bont", ""]


@pytest.mark.parametrize(("raw", "shown"), DANGEROUS.items())
def test_a_formula_gets_a_leading_quote(raw, shown):
    assert neutralise(raw) == shown
    assert neutralise(neutralise(raw)) == shown


@pytest.mark.parametrize("value", [*SAFE, -3, -0.25, 0, 4.5, None])
def test_text_and_numbers_that_cannot_run_are_unchanged(value):
    assert neutralise(value) == value


def _dangerous_table() -> pd.DataFrame:
    texts = [*DANGEROUS, *SAFE]
    return pd.DataFrame(
        {
            "home": texts,
            "change": [-2, -0.123456, 1.23456, SUPPRESSED, None, *range(len(texts) - 5)],
        }
    )


def test_csv_shows_formulas_as_text_and_keeps_numbers(tmp_path):
    path = tmp_path / "out.csv"
    write_csv(_dangerous_table(), path)

    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM, so Excel reads the en dash
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["home", "change"]
    homes = [row[0] for row in rows[1:]]
    assert homes == [*DANGEROUS.values(), *SAFE]
    assert [row[1] for row in rows[1:6]] == ["-2", "-0.123", "1.235", SUPPRESSED, ""]
    # numbers are written bare (a spreadsheet reads them as numbers), text is quoted
    text = raw.decode("utf-8-sig")
    assert "\r\n-2\r\n" not in text and ",-2\r\n" in text and ",-0.123\r\n" in text
    assert '"Willow Court",' in text


def test_csv_quotes_text_so_a_semicolon_cannot_start_a_cell(tmp_path):
    path = tmp_path / "out.csv"
    write_csv(pd.DataFrame({"home": ["Elm;=1+1"]}), path)
    assert '"Elm;=1+1"' in path.read_text(encoding="utf-8-sig")


def test_csv_has_no_index_and_rounds_floats(tmp_path):
    path = tmp_path / "out.csv"
    table = pd.DataFrame({"rate": [2 / 3, 0.5]}, index=[10, 20])
    write_csv(table, path)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        assert list(csv.reader(handle)) == [["rate"], ["0.667"], ["0.5"]]


def _cells(sheet):
    return [cell for row in sheet.iter_rows() for cell in row]


def test_workbook_stores_formulas_as_neutralised_text(tmp_path):
    path = tmp_path / "out.xlsx"
    table = _dangerous_table()
    table.loc[len(table)] = ["#N/A", -7]
    write_workbook({"prepost": table}, path, notes={"Suppression": "groups under 5"})

    book = load_workbook(path)
    assert book.sheetnames == [ABOUT_SHEET, "prepost"]
    for sheet in book.worksheets:
        assert all(cell.data_type != "f" for cell in _cells(sheet))
    sheet = book["prepost"]
    homes = [cell for (cell,) in sheet.iter_rows(min_row=2, max_col=1)]
    # XML reads a stored carriage return back as a line feed; the quote is what matters.
    expected = [v.replace("\r", "\n") for v in DANGEROUS.values()]
    assert [c.value for c in homes] == [*expected, *SAFE[:-1], None, "#N/A"]
    assert {c.data_type for c in homes if c.value is not None} == {"s"}
    changes = [cell for (cell,) in sheet.iter_rows(min_row=2, min_col=2, max_col=2)]
    assert [c.value for c in changes[:5]] == [-2, -0.123, 1.235, SUPPRESSED, None]
    assert changes[-1].value == -7 and changes[-1].data_type == "n"
    assert changes[3].data_type == "s"


def test_workbook_about_sheet_headers_and_widths(tmp_path):
    path = tmp_path / "out.xlsx"
    table = pd.DataFrame({"home": ["A much longer care home name than the header"], "n": [3]})
    notes = {"Suppression threshold": "5", "Methods": "-paired t interval"}
    write_workbook({"By home": table}, path, notes)

    book = load_workbook(path)
    about = book[ABOUT_SHEET]
    rows = [[c.value for c in row] for row in about.iter_rows()]
    assert ["Suppression threshold", "5"] in rows
    assert ["Methods", "'-paired t interval"] in rows
    assert ["By home", "By home"] in rows
    sheet = book["By home"]
    assert sheet.freeze_panes == "A2"
    assert all(cell.font.bold for cell in sheet[1])
    assert not sheet["A2"].font.bold
    assert sheet.column_dimensions["A"].width > sheet.column_dimensions["B"].width >= 3


def test_workbook_dates_and_control_characters(tmp_path):
    path = tmp_path / "out.xlsx"
    opens = dt.datetime(2027, 1, 4, 9, tzinfo=dt.UTC)
    table = pd.DataFrame(
        {"opens": [opens], "day": [dt.date(2027, 1, 4)], "note": ["bell\x07 here"]}
    )
    write_workbook({"waves": table}, path)
    sheet = load_workbook(path)["waves"]
    assert sheet["A2"].value == "2027-01-04T09:00:00+00:00"  # time zone kept, as text
    assert sheet["B2"].value == dt.datetime(2027, 1, 4)
    assert sheet["C2"].value == "bell here"


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["x" * 40], ["x" * 31]),
        (["a/b\\c?d*e:f[g]h"], ["a_b_c_d_e_f_g_h"]),
        (["Rates", "rates", "RATES"], ["Rates", "rates (2)", "RATES (3)"]),
        (["y" * 40, "y" * 35], ["y" * 31, "y" * 27 + " (2)"]),
        (["About"], ["About (2)"]),
        (["History"], ["History_"]),
        (["'quoted'", "", "   "], ["quoted", "Sheet", "Sheet (2)"]),
    ],
)
def test_sheet_names_are_valid_and_unique(names, expected):
    assert sheet_names(names, taken=[ABOUT_SHEET]) == expected


def test_workbook_with_awkward_table_names_opens(tmp_path):
    path = tmp_path / "out.xlsx"
    tables = {
        name: pd.DataFrame({"n": [1]})
        for name in ["Pre/post: 360 [staff]", "pre/POST: 360 [staff]"]
    }
    write_workbook(tables, path)
    book = load_workbook(path)
    assert book.sheetnames == [ABOUT_SHEET, "Pre_post_ 360 _staff_", "pre_POST_ 360 _staff_ (2)"]


def test_pseudonym_is_the_keyed_hash_of_the_id():
    expected = hmac.new(KEY, b"7", hashlib.sha256).hexdigest()[:12]
    assert pseudonym(KEY, 7) == pseudonym(KEY, 7.0) == expected
    assert pseudonym(OTHER_KEY, 7) != expected


ITEMS = pd.DataFrame(
    [
        ["staff_morale", 1, 1, "morale", "How is morale?", 1, 5, False, ("morale",)],
        ["appraisal_360", 2, 2, "listens_to_staff", "Listens", 1, 5, False, ()],
        ["appraisal_360", 2, 1, "develops_staff", "Develops", 1, 5, False, ()],
        ["appraisal_360", 2, 3, "reversed_item", "Rarely listens", 1, 5, True, ()],
    ],
    columns=[
        "instrument",
        "instrument_version_id",
        "position",
        "item_id",
        "text",
        "scale_min",
        "scale_max",
        "reverse",
        "scales",
    ],
)


def _answer(invitation, wave, instrument, person, item, value, relation=None, subject=None):
    return {
        "invitation_id": invitation,
        "cohort": "c1",
        "wave": wave,
        "wave_kind": wave,
        "wave_opens_at": dt.datetime(2027, 1 if wave == "baseline" else 6, 1, tzinfo=dt.UTC),
        "instrument": instrument,
        "instrument_version_id": 1 if instrument == "staff_morale" else 2,
        "relation": relation,
        "person_id": person,
        "subject_id": subject,
        "home": "Willow Court",
        "role": "manager" if person == 100 else "care_worker",
        "item_id": item,
        "value": value,
        "channel": "sms",
        "completed": True,
    }


def _answers() -> pd.DataFrame:
    rows = [
        _answer(1, "end", "staff_morale", 101, "morale", 4),
        _answer(2, "baseline", "staff_morale", 101, "morale", 2),
        _answer(3, "baseline", "staff_morale", 102, "morale", 3),
        _answer(4, "baseline", "appraisal_360", 100, "develops_staff", 5, "self", 100),
        _answer(4, "baseline", "appraisal_360", 100, "reversed_item", 1, "self", 100),
        _answer(5, "baseline", "appraisal_360", 101, "listens_to_staff", 2, "staff", 100),
        _answer(5, "baseline", "appraisal_360", 101, "reversed_item", 5, "staff", 100),
    ]
    return pd.DataFrame(rows)


def test_wide_answers_one_row_per_invitation_with_items_in_order():
    table = wide_answers(_answers(), ITEMS, KEY)

    items = [
        "appraisal_360__develops_staff",
        "appraisal_360__listens_to_staff",
        "appraisal_360__reversed_item",
        "staff_morale__morale",
    ]
    assert list(table.columns) == [*WIDE_ANSWERS_COLUMNS, *items]
    assert table.shape == (5, len(WIDE_ANSWERS_COLUMNS) + 4)
    manager, worker = pseudonym(KEY, 100), pseudonym(KEY, 101)
    staff = table[table["relation"] == "staff"].iloc[0]
    assert staff["pseudonym"] == worker and staff["subject_pseudonym"] == manager
    assert staff["appraisal_360__reversed_item"] == 5  # as answered, not reverse-scored
    assert pd.isna(staff["appraisal_360__develops_staff"])
    morale = table[table["instrument"] == "staff_morale"]
    # baseline before end (by when the wave opened), whatever the input order
    assert list(morale["wave"]) == ["baseline", "baseline", "end"]
    assert morale["subject_pseudonym"].isna().all()
    mine = morale[morale["pseudonym"] == worker]
    assert list(mine["staff_morale__morale"]) == [2, 4]


def test_wide_answers_pseudonyms_are_stable_per_key():
    first = wide_answers(_answers(), ITEMS, KEY)
    again = wide_answers(_answers().sample(frac=1, random_state=3), ITEMS, KEY)
    other = wide_answers(_answers(), ITEMS, OTHER_KEY)
    assert list(first["pseudonym"]) == list(again["pseudonym"])
    assert set(first["pseudonym"]).isdisjoint(set(other["pseudonym"]))


def test_wide_answers_refuses_a_short_key():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        wide_answers(_answers(), ITEMS, b"short")


def test_wide_answers_with_no_answers_has_the_item_columns():
    table = wide_answers(_answers().iloc[0:0], ITEMS, KEY)
    assert table.empty
    assert list(table.columns)[-1] == "staff_morale__morale"


AUDIENCE = {
    "subject_role": "manager",
    "raters": {"self": ["manager"], "staff": ["care_worker"]},
}


def test_wide_file_from_the_database_names_nobody(session, factory, tmp_path):
    home = factory.home("Willow Court")
    manager = factory.person(home, role="manager", given_name="Margaret", family_name="Ode")
    staff = [factory.person(home, given_name=f"Carer{i}", family_name="Zed") for i in range(3)]
    programme, wave = factory.programme([home], [("appraisal_360", AUDIENCE, None)])
    at = dt.datetime(2027, 1, 4, 10, tzinfo=dt.UTC)
    open_wave(session, wave, at)
    for invitation in session.scalars(select(Invitation)).all():
        record_answer(session, invitation, "listens_to_staff", 4, "web", at)
        complete_response(session, invitation, at)
    session.commit()

    table = wide_answers(
        answers_frame(session, programme.key), items_frame(session, programme.key), KEY
    )
    assert len(table) == 4
    assert sorted(table["relation"]) == ["self", "staff", "staff", "staff"]
    assert set(table["subject_pseudonym"]) == {pseudonym(KEY, manager.id)}
    assert not {"person_id", "subject_id", "invitation_id"} & set(table.columns)
    write_csv(table, tmp_path / "wide.csv")
    write_workbook({"answers": table}, tmp_path / "wide.xlsx")
    text = (tmp_path / "wide.csv").read_text(encoding="utf-8-sig")
    book = load_workbook(tmp_path / "wide.xlsx")
    cells = " ".join(str(c.value) for s in book.worksheets for c in _cells(s))
    for person in [manager, *staff]:
        for detail in (person.given_name, person.family_name, person.email, person.mobile):
            assert detail not in text and detail not in cells
    assert "Willow Court" in text
