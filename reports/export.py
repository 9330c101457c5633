"""Report tables as files an evaluator opens: CSV, an XLSX workbook, and the programme
lead's pseudonymised wide file of answers.

Every text cell is neutralised against formula (CSV/DDE) injection before it is written:
care-home names, roles and programme settings come from files people upload, and a cell
such as `=HYPERLINK(...)` would run in the spreadsheet of whoever opens the export. The
rule follows OWASP's "CSV Injection" guidance (and ASVS 1.2.10): a text cell that starts
with `=`, `+`, `-`, `@`, tab, carriage return or NUL is prefixed with a single quote.
We go one step further than the guidance and look past leading whitespace too, because
LibreOffice's CSV import offers "Trim spaces", which turns `" =1+1"` into a formula.
Numbers (negative ones too) stay numbers; they cannot carry a formula.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Alignment, Font
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

DECIMALS = 3
"""Floats in CSV and XLSX files are rounded to this many decimal places."""

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\0")
"""First characters that make a spreadsheet read a text cell as a formula (OWASP, ASVS)."""

# Full-width forms that Excel in East Asian locales also accepts as formula starters.
_WIDE_TRIGGERS = ("\uff1d", "\uff0b", "\uff0d", "\uff20")

ABOUT_SHEET = "About"
"""The first sheet of every workbook: the notes and what each sheet holds."""

MAX_SHEET_NAME = 31
_BAD_SHEET_CHARS = re.compile(r"[\[\]:*?/\\]")
# Excel reserves "History" for its change tracking and refuses a sheet of that name.
_RESERVED_SHEET_NAMES = {"history"}
_MAX_COLUMN_WIDTH = 60
_WIDTH_SAMPLE_ROWS = 1000

WIDE_ANSWERS_COLUMNS = (
    "pseudonym",
    "cohort",
    "wave",
    "instrument",
    "relation",
    "subject_pseudonym",
    "home",
    "role",
)
"""The leading columns of `wide_answers`; one column per item (`instrument__item_id`)
follows, in each instrument's item order."""

PSEUDONYM_LENGTH = 12
MIN_PSEUDONYM_KEY_BYTES = 16


def neutralise(value: Any) -> Any:
    """`value` made safe to put in a spreadsheet cell.

    A string that a spreadsheet would run as a formula or DDE command (one that starts
    with a `FORMULA_TRIGGERS` character, or whose first non-blank character is one of
    `= + - @`) gets a leading single quote. Anything else, numbers included, is returned
    unchanged, so `"suppressed"` and `-0.4` stay as they are. Neutralising twice is the
    same as neutralising once.
    """
    if not isinstance(value, str) or not value:
        return value
    first = value.lstrip()[:1]
    if value.startswith(FORMULA_TRIGGERS) or (first and first in "=+-@" + "".join(_WIDE_TRIGGERS)):
        return "'" + value
    return value


def _is_missing(value: Any) -> bool:
    """Whether a cell is empty (None, NaN, NA, NaT); lists and tuples are not."""
    if value is None:
        return True
    return bool(pd.api.types.is_scalar(value) and pd.isna(value))


def _plain(value: Any) -> Any:
    """A cell value as the file writers take it: None, bool, int, float (rounded),
    date/datetime, or str (not yet neutralised)."""
    if _is_missing(value):
        return None
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return round(number, DECIMALS) if math.isfinite(number) else number
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, dt.datetime | dt.date):
        return value
    if isinstance(value, tuple | list | set | frozenset):
        return "; ".join(str(part) for part in value)
    return str(value)


def _text(value: Any) -> str | None:
    """How a date or a non-finite float is written as text (None if it is neither)."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf" / "-inf": our own rendering, not data, so not quoted
    return None


def _column_names(table: pd.DataFrame) -> list[str]:
    """Header texts; a MultiIndex header is joined with " / "."""
    return [
        " / ".join(str(p) for p in name) if isinstance(name, tuple) else str(name)
        for name in table.columns
    ]


def _rows(table: pd.DataFrame) -> Iterable[list[Any]]:
    for row in table.itertuples(index=False, name=None):
        yield [_plain(value) for value in row]


def write_csv(table: pd.DataFrame, path: str | Path) -> None:
    """Write `table` as a CSV file that Excel and LibreOffice open safely and correctly.

    UTF-8 with a byte-order mark (Excel reads a CSV without one in the machine's legacy
    code page and garbles names such as "Ty Gwyn – Pen-y-bont"), CRLF line ends (RFC 4180),
    no index, floats rounded to `DECIMALS` places, empty cells for missing values, and
    every text cell neutralised and quoted: quoting keeps a `;` inside one cell even where
    Excel splits on semicolons, so a formula cannot start mid-cell.
    """
    with open(path, "w", encoding="utf-8-sig", newline="") as handle:
        writer = csv.writer(handle, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\r\n")
        writer.writerow([neutralise(name) for name in _column_names(table)])
        for row in _rows(table):
            writer.writerow([_csv_cell(value) for value in row])


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    text = _text(value)
    if text is not None:
        return text
    return neutralise(value)


def sheet_names(names: Iterable[str], taken: Iterable[str] = ()) -> list[str]:
    """Valid, unique Excel sheet names for `names`, in order.

    Excel allows at most 31 characters, none of `[ ] : * ? / \\`, no leading or trailing
    apostrophe, not "History", and compares names without case. A clash gets " (2)",
    " (3)" ... within the 31 characters. `taken` are names already in the workbook.
    """
    used = {name.casefold() for name in taken}
    result = []
    for name in names:
        base = ILLEGAL_CHARACTERS_RE.sub("", _BAD_SHEET_CHARS.sub("_", str(name)))
        base = base.strip().strip("'").strip() or "Sheet"
        if base.casefold() in _RESERVED_SHEET_NAMES:
            base = f"{base}_"
        candidate, number = base[:MAX_SHEET_NAME], 1
        while candidate.casefold() in used:
            number += 1
            suffix = f" ({number})"
            candidate = base[: MAX_SHEET_NAME - len(suffix)].rstrip().rstrip("'") + suffix
        used.add(candidate.casefold())
        result.append(candidate)
    return result


def write_workbook(
    tables: Mapping[str, pd.DataFrame],
    path: str | Path,
    notes: Mapping[str, str] | None = None,
) -> None:
    """Write one XLSX workbook: an "About" sheet first, then a sheet per table.

    The About sheet lists `notes` (for example the suppression threshold and the methods)
    and which sheet holds which table, since sheet names may have been shortened. On every
    sheet the header row is bold and frozen and columns are sized to their content. Text
    is always stored as text, never as a formula or an error code, and is neutralised as
    in a CSV; numbers are numbers rounded to `DECIMALS` places; `suppressed` is text.
    """
    workbook = Workbook()
    about = workbook.active
    about.title = ABOUT_SHEET
    names = sheet_names(tables, taken=[ABOUT_SHEET])
    _write_about(about, notes or {}, dict(zip(names, tables, strict=True)))
    for name, table in zip(names, tables.values(), strict=True):
        _write_table(workbook.create_sheet(name), table)
    workbook.save(path)


def _write_about(sheet: Worksheet, notes: Mapping[str, str], contents: Mapping[str, str]):
    rows: list[list[Any]] = [["Note", "Detail"], *([k, v] for k, v in notes.items())]
    rows += [[], ["Sheet", "Table"], *([s, t] for s, t in contents.items())]
    for r, row in enumerate(rows, start=1):
        for c, value in enumerate(row, start=1):
            _put(sheet, r, c, value)
    for r in (1, len(notes) + 3):
        for cell in sheet[r]:
            cell.font = Font(bold=True)
    sheet.column_dimensions["A"].width = 28
    sheet.column_dimensions["B"].width = 100
    for cell in sheet["B"]:
        cell.alignment = Alignment(wrap_text=True, vertical="top")


def _write_table(sheet: Worksheet, table: pd.DataFrame) -> None:
    headers = _column_names(table)
    widths = [len(h) for h in headers]
    for c, name in enumerate(headers, start=1):
        _put(sheet, 1, c, name).font = Font(bold=True)
    for r, row in enumerate(_rows(table), start=2):
        for c, value in enumerate(row, start=1):
            cell = _put(sheet, r, c, value)
            if r <= _WIDTH_SAMPLE_ROWS + 1 and cell.value is not None:
                widths[c - 1] = max(widths[c - 1], len(_shown(cell.value)))
    sheet.freeze_panes = "A2"
    for c, width in enumerate(widths, start=1):
        sheet.column_dimensions[get_column_letter(c)].width = min(width + 2, _MAX_COLUMN_WIDTH)


def _shown(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return "2027-01-01 00:00"
    if isinstance(value, dt.date):
        return "2027-01-01"
    return str(value)


def _put(sheet: Worksheet, row: int, column: int, value: Any):
    """Write one plain value; text is neutralised and forced to the string type, because
    openpyxl would otherwise store "=..." as a formula and "#N/A" as an error."""
    cell = sheet.cell(row=row, column=column)
    value = _plain(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        value = value.isoformat()  # Excel has no time zones; keep the instant exact as text
    elif isinstance(value, float) and not math.isfinite(value):
        value = str(value)
    if isinstance(value, str):
        cell.value = ILLEGAL_CHARACTERS_RE.sub("", neutralise(value))
        cell.data_type = "s"
    else:
        cell.value = value
        if isinstance(value, dt.datetime):
            cell.number_format = "yyyy-mm-dd hh:mm"
        elif isinstance(value, dt.date):
            cell.number_format = "yyyy-mm-dd"
    return cell


def pseudonym(key: bytes, identifier: Any) -> str:
    """The first 12 hex characters of HMAC-SHA256(key, str(identifier)).

    The same key gives the same pseudonym in every export, so files can be linked; without
    the key a pseudonym cannot be turned back into an id (ids are small integers, so the
    key, not the hash, is what protects them). Integral floats (a pandas column with gaps
    holds 7 as 7.0) are read as integers so a person has one pseudonym.
    """
    if isinstance(identifier, numbers.Real) and float(identifier).is_integer():
        identifier = int(identifier)
    digest = hmac.new(key, str(identifier).encode(), hashlib.sha256).hexdigest()
    return digest[:PSEUDONYM_LENGTH]


def wide_answers(answers: pd.DataFrame, items: pd.DataFrame, pseudonym_key: bytes) -> pd.DataFrame:
    """The programme lead's pseudonymised analysis file: one row per invitation answered,
    that is per person per wave and instrument (and per subject and relation for a 360).

    Columns: `WIDE_ANSWERS_COLUMNS`, then one column `instrument__item_id` per item of
    `items` in each instrument's order (the newest version's order; items only older
    versions asked come after). Values are as answered on the item's scale, NOT
    reverse-scored, so the analyst sees what was said and applies the instrument's
    scoring. People (and 360 subjects) appear only as `pseudonym`s under `pseudonym_key`;
    no names, contacts or database ids. `answers` and `items` are
    `reports.frames.answers_frame` and `items_frame`.
    """
    if len(pseudonym_key) < MIN_PSEUDONYM_KEY_BYTES:
        raise ValueError(f"the pseudonym key must be at least {MIN_PSEUDONYM_KEY_BYTES} bytes")
    item_columns = _item_columns(items, answers)
    if answers.empty:
        return pd.DataFrame(columns=[*WIDE_ANSWERS_COLUMNS, *item_columns])
    column = answers["instrument"].astype(str) + "__" + answers["item_id"].astype(str)
    data = answers.assign(column=column)
    values = data.pivot(index="invitation_id", columns="column", values="value")
    # Answers are whole scale points; keep them whole (a plain pivot turns gaps into floats).
    values = values.astype("Int64") if _all_whole(data["value"]) else values
    # groupby().first() would skip NaN and could borrow a value from another row.
    first = data.drop_duplicates("invitation_id").set_index("invitation_id")
    names = _pseudonyms(pd.concat([first["person_id"], first["subject_id"]]), pseudonym_key)
    rows = pd.DataFrame(
        {
            "pseudonym": first["person_id"].map(names),
            "cohort": first["cohort"],
            "wave": first["wave"],
            "instrument": first["instrument"],
            "relation": first["relation"],
            "subject_pseudonym": first["subject_id"].map(names).astype(object),
            "home": first["home"],
            "role": first["role"],
            "_opens": first["wave_opens_at"],
        }
    )
    table = rows.join(values.reindex(columns=item_columns))
    table = table.sort_values(
        ["cohort", "_opens", "wave", "instrument", "relation", "subject_pseudonym", "pseudonym"],
        na_position="first",
        kind="stable",
    )
    return table.drop(columns="_opens").reset_index(drop=True)


def _all_whole(values: pd.Series) -> bool:
    numbers_only = pd.to_numeric(values, errors="coerce")
    return bool(numbers_only.notna().all() and (numbers_only % 1 == 0).all())


def _item_columns(items: pd.DataFrame, answers: pd.DataFrame) -> list[str]:
    """`instrument__item_id` for every item, instrument by instrument in item order;
    an answered item missing from `items` is kept (at its instrument's end), not lost."""
    ordered = items.sort_values(
        ["instrument", "instrument_version_id", "position"], ascending=[True, False, True]
    )
    known = ordered.drop_duplicates(["instrument", "item_id"])
    answered = answers[["instrument", "item_id"]].drop_duplicates()
    extra = answered.merge(known[["instrument", "item_id"]], how="left", indicator=True)
    extra = extra[extra["_merge"] == "left_only"].sort_values(["instrument", "item_id"])
    columns: list[str] = []
    for instrument in sorted(set(known["instrument"]) | set(extra["instrument"])):
        ids = [*known.loc[known["instrument"] == instrument, "item_id"]]
        ids += [*extra.loc[extra["instrument"] == instrument, "item_id"]]
        columns += [f"{instrument}__{item_id}" for item_id in ids]
    return columns


def _pseudonyms(ids: pd.Series, key: bytes) -> dict[int, str]:
    """Each distinct person id with its pseudonym.

    48-bit pseudonyms make a clash between two people vanishingly rare; if it ever
    happened two people would silently merge in the analysis, so refuse instead.
    """
    distinct = {int(i) for i in ids.dropna()}
    names = {i: pseudonym(key, i) for i in distinct}
    if len(set(names.values())) < len(names):
        raise ValueError("two people share a pseudonym under this key; use another key")
    return names
