"""Roster import: the staff list of one or more care homes, from CSV or XLSX.

A programme lead uploads a spreadsheet with one person per row. The header row names
the columns (case-insensitive; ``-``, ``_`` and spaces are interchangeable)::

    care_home*  cqc_location_id  local_authority  external_id  given_name*  family_name
    role*  mobile  email  language  active_from                          (* required)

Every value is checked before anything is written. By default a file with any problem
imports nothing and the report lists every problem with the line a person sees in their
spreadsheet (the header is line 1). With ``skip_invalid=True`` the good rows are imported
and the bad ones listed.

Matching, in this order, each key only among people not already claimed by a stronger key:

1. ``external_id`` (the employer's staff number), when the row has one;
2. ``mobile`` (E.164), unless both the row and the person have different staff numbers;
3. ``email`` (case-insensitive), only when exactly one existing person has that address.

A matched person is updated in place; only values that differ are assigned, so importing
the same file twice changes nothing. An unmatched row creates a person.

Scope: the file is the complete roster **of the care homes it names, and only those**.
Active people of a named home who are not in the file are marked as left
(``active_to`` = today; nobody is ever deleted). Care homes that do not appear in the
file are untouched, so a lead may import one home at a time. A column that is absent
from the header leaves that field as it is in the database (a file without a ``mobile``
column does not wipe mobiles); a column that is present but blank clears the value
(``language`` blank means ``en``). Staff numbers, CQC location ids and local authorities
are filled when given and never cleared.

Mobile numbers are parsed as UK numbers (international format is accepted for numbers
from abroad) and must be mobiles, since invitations go by SMS; the Ofcom drama range
07700 900000-900999, which ``phonenumbers`` treats as unallocated, is accepted so that
demonstrations and tests can use numbers that belong to nobody.

``import_roster`` flushes but never commits: the caller commits when ``report.imported``.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import re
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from openpyxl import load_workbook
from openpyxl.utils.exceptions import InvalidFileException
from phonenumbers import NumberParseException, PhoneNumberType
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.models import ROLES, CareHome, Person

__all__ = [
    "COLUMNS",
    "REQUIRED_COLUMNS",
    "ROLE_ALIASES",
    "RosterError",
    "RosterParse",
    "RosterProblem",
    "RosterReport",
    "RosterRow",
    "import_roster",
    "normalise_home_key",
    "parse_roster",
]

COLUMNS = (
    "care_home",
    "cqc_location_id",
    "local_authority",
    "external_id",
    "given_name",
    "family_name",
    "role",
    "mobile",
    "email",
    "language",
    "active_from",
)
"""The columns a roster may have, in their usual order."""

REQUIRED_COLUMNS = ("care_home", "given_name", "role")
"""Columns that must be in the header and filled on every row."""

ROLE_ALIASES: dict[str, str] = {
    **{role.replace("_", " "): role for role in ROLES},
    "registered manager": "manager",
    "home manager": "manager",
    "deputy": "deputy_manager",
    "carer": "care_worker",
    "care assistant": "care_worker",
    "healthcare assistant": "care_worker",
    "hca": "care_worker",
    "senior carer": "senior_care_worker",
    "rn": "nurse",
    "registered nurse": "nurse",
    "owner": "proprietor",
    "housekeeping": "ancillary",
    "kitchen": "ancillary",
    "domestic": "ancillary",
}
"""Accepted spellings of each role (lower case, single spaces) mapped to `storage.models.ROLES`."""

DEFAULT_LANGUAGE = "en"

_MAX_LENGTHS = {
    "care_home": 200,
    "local_authority": 100,
    "external_id": 64,
    "given_name": 100,
    "family_name": 100,
}
_CQC_RE = re.compile(r"^1-\d{8,11}$")
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})*$", re.IGNORECASE)
_EXCEL_TEXT_RE = re.compile(r'^="(.*)"$', re.DOTALL)
_DRAMA_MOBILES = range(7700900000, 7700901000)
"""Ofcom's drama range 07700 900000-900999 as UK national numbers."""

_PHONE_KINDS = {
    PhoneNumberType.TOLL_FREE: "a freephone number",
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.SHARED_COST: "a shared-cost number",
    PhoneNumberType.VOIP: "an internet (VoIP) number",
    PhoneNumberType.PERSONAL_NUMBER: "a personal (070) number",
    PhoneNumberType.PAGER: "a pager number",
    PhoneNumberType.UAN: "a non-geographic number",
    PhoneNumberType.VOICEMAIL: "a voicemail number",
}


class RosterError(ValueError):
    """The file cannot be read as a roster at all (wrong format, unreadable, empty)."""


@dataclass
class RosterProblem:
    """One thing wrong with a roster, located as the person sees it in their spreadsheet."""

    line: int
    column: str | None
    value: str
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}"
        if self.column:
            where += f', column "{self.column}"'
        if self.value:
            shown = self.value if len(self.value) <= 60 else self.value[:57] + "..."
            return f'{where}: "{shown}" {self.reason}'
        return f"{where}: {self.reason}"


@dataclass
class RosterRow:
    """One validated, normalised person row.

    `active_from` is None when the file leaves it blank: new people then start today,
    existing people keep their date.
    """

    line: int
    care_home: str
    care_home_key: str
    cqc_location_id: str | None
    local_authority: str | None
    external_id: str | None
    given_name: str
    family_name: str
    role: str
    mobile: str | None
    email: str | None
    language: str
    active_from: dt.date | None


@dataclass
class RowKeys:
    """The identifying values that could be read from a row that failed validation."""

    line: int
    care_home_key: str | None
    external_id: str | None
    mobile: str | None
    email: str | None


@dataclass
class RosterParse:
    """The result of reading a roster file: valid rows and every problem found."""

    rows: list[RosterRow]
    problems: list[RosterProblem]
    columns: tuple[str, ...] = ()
    """The normalised columns present in the header."""
    file_format: str = "csv"
    encoding: str | None = None
    """For CSV, the text encoding used: ``utf-8``, ``utf-16`` or ``cp1252``."""
    rejected: list[RowKeys] = field(default_factory=list)
    """Rows with problems, reduced to whatever identifying values were valid."""
    fatal: bool = False
    """True when the header itself is wrong, so no row can be imported."""

    @property
    def ok(self) -> bool:
        """Whether the file has no problems at all."""
        return not self.problems

    @property
    def data_rows(self) -> int:
        """How many non-blank data rows the file has (valid or not)."""
        return len(self.rows) + len(self.rejected)


@dataclass
class RosterReport:
    """What an import did, or would have done, with counts and problems."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    left: int = 0
    reactivated: int = 0
    skipped: int = 0
    problems: list[RosterProblem] = field(default_factory=list)
    imported: bool = False
    homes_created: int = 0
    homes_updated: int = 0
    rows_read: int = 0
    file_format: str = "csv"
    encoding: str | None = None
    leavers: list[str] = field(default_factory=list)
    """Display names of the people marked as left, as "Name (Home)"."""

    def summary(self) -> str:
        """A multi-line, human-readable account of the import, for the CLI and web page."""
        source = self.file_format.upper()
        if self.encoding == "cp1252":
            source += ", read as Windows-1252 text because it is not UTF-8: check accented names"
        elif self.encoding:
            source += f", {self.encoding.upper()}"
        lines = [f"Roster: {self.rows_read} data rows read ({source})."]
        if self.imported:
            lines.append(
                f"People: {self.created} created, {self.updated} updated, "
                f"{self.unchanged} unchanged, {self.reactivated} re-activated, "
                f"{self.left} marked as left."
            )
            lines.append(f"Care homes: {self.homes_created} created, {self.homes_updated} updated.")
            if self.skipped:
                lines.append(f"{self.skipped} rows with problems were skipped (listed below).")
            if self.leavers:
                lines.append("Marked as left (not in the file for their care home):")
                lines.extend(f"  {name}" for name in self.leavers)
        elif self.problems:
            lines.append(
                f"Nothing was imported: {len(self.problems)} problem(s). Fix them and upload "
                "again, or import only the valid rows with --skip-invalid."
            )
        else:
            lines.append("Nothing was imported.")
        if self.problems:
            lines.append("Problems:")
            lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)


class _Invalid(Exception):
    """A value failed validation; `reason` completes the sentence `"value" ...`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- values


def normalise_home_key(name: str) -> str:
    """The matching key of a care home name: lower case, whitespace collapsed."""
    return " ".join(name.split()).lower()


def _normalise_header(text: str) -> str:
    return re.sub(r"[\s_\-]+", "_", text.strip().lower()).strip("_")


def _cell_text(value: Any) -> str:
    """A spreadsheet cell as stripped text; whole numbers lose Excel's trailing ``.0``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0, 0):
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    text = str(value).strip()
    excel_text = _EXCEL_TEXT_RE.match(text)  # ="07700..." keeps a leading zero in Excel
    return excel_text.group(1).strip() if excel_text else text


def _normalise_mobile(text: str) -> str:
    """A mobile number in E.164, or `_Invalid` saying why it cannot receive SMS."""
    try:
        number = phonenumbers.parse(text.lstrip("'"), "GB")
    except NumberParseException as exc:
        raise _Invalid("is not a phone number") from exc
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if number.country_code == 44 and number.national_number in _DRAMA_MOBILES:
        return e164
    if not phonenumbers.is_valid_number(number):
        if not phonenumbers.is_possible_number(number):
            raise _Invalid("is not a valid phone number (wrong number of digits)")
        raise _Invalid("is not a valid phone number")
    kind = phonenumbers.number_type(number)
    if kind in (PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE):
        return e164
    if kind == PhoneNumberType.FIXED_LINE:
        raise _Invalid("is a landline, not a mobile number")
    description = _PHONE_KINDS.get(kind, "not a mobile number")
    raise _Invalid(f"is {description}, not a mobile number")


def normalise_mobile(text: str) -> str | None:
    """`text` as an E.164 mobile by the roster's rules, or None when it is not one."""
    try:
        return _normalise_mobile(text)
    except _Invalid:
        return None


def _normalise_email(text: str) -> str:
    try:
        return validate_email(text, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise _Invalid(f"is not a valid email address ({exc})") from exc


def _normalise_role(text: str) -> str:
    spelled = " ".join(re.sub(r"[_\-]", " ", text).lower().split())
    role = ROLE_ALIASES.get(spelled)
    if role is None:
        raise _Invalid(f"is not a known role; use one of: {', '.join(ROLES)}")
    return role


def _normalise_language(text: str) -> str:
    code = text.replace("_", "-")
    if not _LANGUAGE_RE.match(code) or len(code) > 8:
        raise _Invalid("is not a language code such as en, cy or pl")
    primary, *rest = code.split("-")
    parts = [primary.lower()] + [p.upper() if len(p) == 2 else p.lower() for p in rest]
    return "-".join(parts)


def _normalise_cqc(text: str) -> str:
    code = "".join(text.split())
    if not _CQC_RE.match(code):
        raise _Invalid("is not a CQC location id such as 1-123456789")
    return code


def _parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text[:10] if len(text) > 10 and text[10] in "T " else text)
    except ValueError as exc:
        raise _Invalid("is not a date in the form YYYY-MM-DD") from exc


# --------------------------------------------------------------------------- reading


def _read_csv(path: Path) -> tuple[list[tuple[int, list[Any]]], str]:
    """Rows as (first physical line, values), and the encoding used."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RosterError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if raw.startswith(b"PK\x03\x04"):
        raise RosterError(
            f"{path.name} is a spreadsheet workbook, not CSV text: save it with an .xlsx name"
        )
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text, encoding = raw.decode("utf-16"), "utf-16"
    else:
        try:
            text, encoding = raw.decode("utf-8-sig"), "utf-8"
        except UnicodeDecodeError:
            try:
                text, encoding = raw.decode("cp1252"), "cp1252"
            except UnicodeDecodeError as exc:
                raise RosterError(
                    f"{path.name} is neither UTF-8 nor Windows-1252 text; "
                    'save it again as "CSV UTF-8"'
                ) from exc
    if "\x00" in text:
        raise RosterError(f"{path.name} does not look like a CSV text file")
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = ","
    if "," not in first:
        delimiter = ";" if ";" in first else "\t" if "\t" in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[tuple[int, list[Any]]] = []
    previous_end = 0
    try:
        for values in reader:
            rows.append((previous_end + 1, values))
            previous_end = reader.line_num
    except csv.Error as exc:
        raise RosterError(f"{path.name}, line {reader.line_num}: {exc}") from exc
    return rows, encoding


def _read_xlsx(path: Path) -> list[tuple[int, list[Any]]]:
    """Rows of the first sheet as (sheet row number, cell values)."""
    try:
        workbook = load_workbook(path, read_only=True, data_only=True)
    except (InvalidFileException, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise RosterError(f"cannot read {path} as an Excel .xlsx workbook ({exc})") from exc
    try:
        if not workbook.worksheets:
            raise RosterError(f"{path.name} has no worksheet")
        sheet = workbook.worksheets[0]
        return [
            (number, list(values))
            for number, values in enumerate(sheet.iter_rows(min_row=1, values_only=True), 1)
        ]
    finally:
        workbook.close()


# --------------------------------------------------------------------------- parsing


def parse_roster(path: str | Path) -> RosterParse:
    """Read and validate a roster file without touching the database.

    Raises `RosterError` when the file is not a readable ``.csv`` or ``.xlsx``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        raw_rows, encoding = _read_csv(path)
        file_format = "csv"
    elif suffix == ".xlsx":
        raw_rows, encoding, file_format = _read_xlsx(path), None, "xlsx"
    else:
        raise RosterError(
            f'{path.name}: "{suffix or "no extension"}" files are not supported; '
            "save the roster as CSV (.csv) or Excel workbook (.xlsx)"
        )
    rows = [(line, [_cell_text(v) for v in values]) for line, values in raw_rows]
    rows = [(line, values) for line, values in rows if any(values)]
    if not rows:
        raise RosterError(f"{path.name} is empty: it needs a header row and one row per person")

    header_line, header = rows[0]
    result = RosterParse(rows=[], problems=[], file_format=file_format, encoding=encoding)
    positions = _read_header(header_line, header, result.problems)
    result.columns = tuple(c for c in COLUMNS if c in positions)
    if result.problems:
        result.fatal = True
        return result

    for line, values in rows[1:]:
        problems: list[RosterProblem] = []
        cells = {c: values[i] if i < len(values) else "" for c, i in positions.items()}
        known = set(positions.values())
        for index, value in enumerate(values):
            if value and index not in known:
                problems.append(
                    RosterProblem(
                        line, None, value, f"is in column {index + 1}, which has no header"
                    )
                )
        row, keys = _validate_row(line, cells, problems)
        if row is not None and not problems:
            result.rows.append(row)
        else:
            result.rejected.append(keys)
        result.problems.extend(problems)

    _check_file(result)
    result.problems.sort(key=_problem_order)
    return result


def _problem_order(problem: RosterProblem) -> tuple[int, int]:
    column = problem.column if problem.column in COLUMNS else None
    return problem.line, COLUMNS.index(column) if column else len(COLUMNS)


def _read_header(line: int, header: list[str], problems: list[RosterProblem]) -> dict[str, int]:
    positions: dict[str, int] = {}
    for index, title in enumerate(header):
        if not title:
            continue
        column = _normalise_header(title)
        if column not in COLUMNS:
            problems.append(
                RosterProblem(
                    line,
                    title,
                    "",
                    f"not a known column; the columns are: {', '.join(COLUMNS)}",
                )
            )
        elif column in positions:
            problems.append(
                RosterProblem(
                    line,
                    title,
                    "",
                    f"appears twice (columns {positions[column] + 1} and {index + 1})",
                )
            )
        else:
            positions[column] = index
    for column in REQUIRED_COLUMNS:
        if column not in positions:
            problems.append(
                RosterProblem(line, column, "", "required column missing from the header")
            )
    return positions


def _validate_row(
    line: int, cells: dict[str, str], problems: list[RosterProblem]
) -> tuple[RosterRow | None, RowKeys]:
    """Check one row, appending every problem; returns the row (if valid) and its keys."""
    clean: dict[str, Any] = {}

    def check(column: str, convert: Any) -> None:
        text = cells.get(column, "")
        if not text:
            clean[column] = None
            return
        try:
            clean[column] = convert(text)
        except _Invalid as exc:
            clean[column] = None
            problems.append(RosterProblem(line, column, text, exc.reason))

    def text_value(column: str) -> None:
        def convert(text: str) -> str:
            value = " ".join(text.split())
            limit = _MAX_LENGTHS[column]
            if len(value) > limit:
                raise _Invalid(f"is too long (at most {limit} characters)")
            return value

        check(column, convert)

    for column in ("care_home", "local_authority", "external_id", "given_name", "family_name"):
        text_value(column)
    check("cqc_location_id", _normalise_cqc)
    check("role", _normalise_role)
    check("mobile", _normalise_mobile)
    check("email", _normalise_email)
    check("language", _normalise_language)
    check("active_from", _parse_date)

    for column in REQUIRED_COLUMNS:
        if not cells.get(column):
            problems.append(RosterProblem(line, column, "", "required, but empty"))
    if not cells.get("mobile") and not cells.get("email"):
        problems.append(
            RosterProblem(line, None, "", "no mobile and no email: this person cannot be invited")
        )
    if clean["role"] == "manager" and not cells.get("email"):
        problems.append(
            RosterProblem(
                line,
                "email",
                "",
                "missing: a manager needs an email address, as manager surveys are sent by email",
            )
        )

    home = clean["care_home"]
    keys = RowKeys(
        line=line,
        care_home_key=normalise_home_key(home) if home else None,
        external_id=clean["external_id"],
        mobile=clean["mobile"],
        email=clean["email"],
    )
    if problems:
        return None, keys
    row = RosterRow(
        line=line,
        care_home=home,
        care_home_key=normalise_home_key(home),
        cqc_location_id=clean["cqc_location_id"],
        local_authority=clean["local_authority"],
        external_id=clean["external_id"],
        given_name=clean["given_name"],
        family_name=clean["family_name"] or "",
        role=clean["role"],
        mobile=clean["mobile"],
        email=clean["email"],
        language=clean["language"] or DEFAULT_LANGUAGE,
        active_from=clean["active_from"],
    )
    return row, keys


def _check_file(result: RosterParse) -> None:
    """Checks across rows: duplicate staff numbers and mobiles, inconsistent care homes."""
    bad: dict[int, list[RosterProblem]] = defaultdict(list)
    everyone: list[RowKeys | RosterRow] = [*result.rows, *result.rejected]

    for column in ("external_id", "mobile"):
        lines_by_value: dict[str, list[int]] = defaultdict(list)
        for item in everyone:
            value = getattr(item, column)
            if value:
                lines_by_value[value].append(item.line)
        for value, lines in lines_by_value.items():
            for line in lines if len(lines) > 1 else ():
                others = ", ".join(str(other) for other in sorted(lines) if other != line)
                bad[line].append(
                    RosterProblem(line, column, value, f"is also used on line {others}")
                )

    homes: dict[str, dict[str, dict[str, list[int]]]] = defaultdict(lambda: defaultdict(dict))
    cqc_homes: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for row in result.rows:
        for column in ("cqc_location_id", "local_authority"):
            value = getattr(row, column)
            if value:
                homes[row.care_home_key][column].setdefault(value, []).append(row.line)
        if row.cqc_location_id:
            cqc_homes[row.cqc_location_id][row.care_home_key].append(row.line)
    for by_column in homes.values():
        for column, by_value in by_column.items():
            if len(by_value) < 2:
                continue
            for value, lines in by_value.items():
                elsewhere = sorted(ln for v, ls in by_value.items() if v != value for ln in ls)
                for line in lines:
                    bad[line].append(
                        RosterProblem(
                            line,
                            column,
                            value,
                            "differs from the value given for the same care home on line "
                            + ", ".join(map(str, elsewhere)),
                        )
                    )
    for cqc, by_home in cqc_homes.items():
        if len(by_home) < 2:
            continue
        for home_key, lines in by_home.items():
            elsewhere = sorted(ln for k, ls in by_home.items() if k != home_key for ln in ls)
            for line in lines:
                bad[line].append(
                    RosterProblem(
                        line,
                        "cqc_location_id",
                        cqc,
                        "is also given for a different care home on line "
                        + ", ".join(map(str, elsewhere)),
                    )
                )

    if not bad:
        return
    for problems in bad.values():
        result.problems.extend(problems)
    still_good = []
    for row in result.rows:
        if row.line in bad:
            result.rejected.append(_keys_of(row))
        else:
            still_good.append(row)
    result.rows = still_good
    result.rejected.sort(key=lambda keys: keys.line)


def _keys_of(row: RosterRow) -> RowKeys:
    return RowKeys(row.line, row.care_home_key, row.external_id, row.mobile, row.email)


# --------------------------------------------------------------------------- importing


def import_roster(
    session: Session,
    path: str | Path,
    *,
    skip_invalid: bool = False,
    today: dt.date | None = None,
) -> RosterReport:
    """Import a roster file into `session` and report what changed.

    With any problem and ``skip_invalid=False`` nothing is written. The session is
    flushed, never committed: commit when ``report.imported`` is true. Raises
    `RosterError` when the file cannot be read at all.
    """
    today = today or dt.date.today()
    parsed = parse_roster(path)
    report = RosterReport(
        problems=list(parsed.problems),
        rows_read=parsed.data_rows,
        file_format=parsed.file_format,
        encoding=parsed.encoding,
    )
    if parsed.fatal or (parsed.problems and not skip_invalid):
        return report

    plan = _Plan(session, parsed)
    if plan.problems:
        report.problems = sorted(report.problems + plan.problems, key=_problem_order)
        if not skip_invalid:
            return report
    good = [row for row in parsed.rows if row.line not in plan.bad_lines]
    report.skipped = parsed.data_rows - len(good)
    if not good:
        return report

    with session.begin_nested():
        plan.apply(good, report, today)
        session.flush()
    report.imported = True
    return report


def _chunks(values: Iterable[str], size: int = 500) -> Iterable[list[str]]:
    items = sorted(set(values))
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _describe(person: Person) -> str:
    details = [person.care_home.name]
    if person.external_id:
        details.append(f"staff number {person.external_id}")
    if person.active_to is not None:
        details.append(f"left {person.active_to.isoformat()}")
    return f"{person.full_name} ({', '.join(details)})"


class _Plan:
    """Everything decided before writing: homes, matches, conflicts with the database."""

    def __init__(self, session: Session, parsed: RosterParse) -> None:
        self.session = session
        self.columns = set(parsed.columns)
        self.problems: list[RosterProblem] = []
        self.bad_lines: set[int] = set()
        rows = parsed.rows
        keyed: Sequence[RosterRow | RowKeys] = [*rows, *parsed.rejected]

        home_keys = {item.care_home_key for item in keyed if item.care_home_key}
        self.homes: dict[str, CareHome] = {}
        for chunk in _chunks(home_keys):
            for home in session.scalars(select(CareHome).where(CareHome.key.in_(chunk))):
                self.homes[home.key] = home
        cqc_owner: dict[str, CareHome] = {}
        for chunk in _chunks(r.cqc_location_id for r in rows if r.cqc_location_id):
            query = select(CareHome).where(CareHome.cqc_location_id.in_(chunk))
            for home in session.scalars(query):
                cqc_owner[home.cqc_location_id or ""] = home
        for row in rows:
            owner = cqc_owner.get(row.cqc_location_id or "")
            if owner is not None and owner.key != row.care_home_key:
                self._problem(
                    row.line,
                    "cqc_location_id",
                    row.cqc_location_id or "",
                    f'already belongs to care home "{owner.name}"',
                )

        self.by_external: dict[str, Person] = {}
        self.by_mobile: dict[str, Person] = {}
        self.by_email: dict[str, list[Person]] = defaultdict(list)
        for chunk in _chunks(k.external_id for k in keyed if k.external_id):
            for person in session.scalars(select(Person).where(Person.external_id.in_(chunk))):
                self.by_external[person.external_id or ""] = person
        for chunk in _chunks(k.mobile for k in keyed if k.mobile):
            for person in session.scalars(select(Person).where(Person.mobile.in_(chunk))):
                self.by_mobile[person.mobile or ""] = person
        for chunk in _chunks(k.email.lower() for k in keyed if k.email):
            query = select(Person).where(func.lower(Person.email).in_(chunk))
            for person in session.scalars(query):
                self.by_email[(person.email or "").lower()].append(person)

        self.new_homes: set[str] = set()
        self.updated_homes: set[str] = set()
        self.seen_homes: set[str] = set()
        self.matches: dict[int, Person] = self._match(keyed)
        self.claimed_ids = {person.id for person in self.matches.values()}
        self._check_mobiles(rows)

    def _problem(self, line: int, column: str | None, value: str, reason: str) -> None:
        self.problems.append(RosterProblem(line, column, value, reason))
        self.bad_lines.add(line)

    def _match(self, keyed: Sequence[RosterRow | RowKeys]) -> dict[int, Person]:
        """Existing person for each line, by staff number, then mobile, then unique email."""
        matches: dict[int, Person] = {}
        claimed: set[int] = set()
        for item in keyed:
            person = self.by_external.get(item.external_id or "")
            if person is not None:
                matches[item.line] = person
                claimed.add(person.id)
        for item in keyed:
            if item.line in matches or not item.mobile:
                continue
            person = self.by_mobile.get(item.mobile)
            if person is None or person.id in claimed:
                continue
            if item.external_id and person.external_id:
                continue  # two different staff numbers: not the same person
            matches[item.line] = person
            claimed.add(person.id)
        by_email: dict[int, list[int]] = defaultdict(list)
        for item in keyed:
            if item.line in matches or not item.email:
                continue
            holders = self.by_email.get(item.email.lower(), [])
            if len(holders) != 1 or holders[0].id in claimed:
                continue
            person = holders[0]
            if item.external_id and person.external_id:
                continue
            by_email[person.id].append(item.line)
            matches[item.line] = person
        for lines in by_email.values():
            if len(lines) < 2:
                continue
            for line in lines:
                del matches[line]
                others = ", ".join(str(other) for other in lines if other != line)
                item = next(k for k in keyed if k.line == line)
                self._problem(
                    line,
                    "email",
                    item.email or "",
                    f"matches the same existing person as line {others}; add a staff number "
                    "or mobile to tell them apart",
                )
        return matches

    def _check_mobiles(self, rows: Sequence[RosterRow]) -> None:
        """A mobile held by someone other than the row's person is a problem for that line.

        A holder who is in the file with another (or no) mobile releases the number,
        which allows swaps; rows found bad stop releasing, so repeat until stable.
        """
        row_by_person: dict[int, RosterRow] = {}
        for row in rows:
            person = self.matches.get(row.line)
            if person is not None:
                row_by_person[person.id] = row
        reported: set[int] = set()
        while True:
            found = False
            for row in rows:
                if row.line in self.bad_lines or not row.mobile:
                    continue
                holder = self.by_mobile.get(row.mobile)
                if holder is None or holder is self.matches.get(row.line):
                    continue
                holder_row = row_by_person.get(holder.id)
                releases = (
                    holder_row is not None
                    and holder_row.line not in self.bad_lines
                    and "mobile" in self.columns
                    and holder_row.mobile != row.mobile
                )
                if releases or row.line in reported:
                    continue
                reported.add(row.line)
                found = True
                self._problem(
                    row.line,
                    "mobile",
                    row.mobile,
                    f"already belongs to {_describe(holder)}"
                    + (f", listed on line {holder_row.line}" if holder_row else ""),
                )
            if not found:
                return

    def _home_for(self, row: RosterRow, report: RosterReport) -> CareHome:
        home = self.homes.get(row.care_home_key)
        if home is None:
            home = CareHome(
                key=row.care_home_key,
                name=row.care_home,
                cqc_location_id=row.cqc_location_id,
                local_authority=row.local_authority,
            )
            self.session.add(home)
            self.homes[row.care_home_key] = home
            self.new_homes.add(row.care_home_key)
            report.homes_created += 1
            return home
        changed = False
        if row.care_home_key not in self.seen_homes:
            changed |= _assign(home, "name", row.care_home)
        if row.cqc_location_id:
            changed |= _assign(home, "cqc_location_id", row.cqc_location_id)
        if row.local_authority:
            changed |= _assign(home, "local_authority", row.local_authority)
        if changed and row.care_home_key not in self.new_homes | self.updated_homes:
            self.updated_homes.add(row.care_home_key)
            report.homes_updated += 1
        return home

    def apply(self, good: Sequence[RosterRow], report: RosterReport, today: dt.date) -> None:
        """Write the good rows: homes, people, leavers. Counts go into `report`."""
        home_of_row: dict[int, CareHome] = {}
        for row in good:
            home_of_row[row.line] = self._home_for(row, report)
            self.seen_homes.add(row.care_home_key)

        # Free mobiles that move to someone else in this file before assigning them.
        wanted = {row.mobile for row in good if row.mobile}
        releasing = [
            (person, row)
            for row in good
            if (person := self.matches.get(row.line)) is not None
            and "mobile" in self.columns
            and person.mobile in wanted
            and person.mobile != row.mobile
        ]
        if releasing:
            for person, _row in releasing:
                person.mobile = None
            self.session.flush()

        for row in good:
            home = home_of_row[row.line]
            person = self.matches.get(row.line)
            if person is None:
                self.session.add(
                    Person(
                        external_id=row.external_id,
                        given_name=row.given_name,
                        family_name=row.family_name,
                        role=row.role,
                        care_home=home,
                        mobile=row.mobile,
                        email=row.email,
                        language=row.language,
                        active_from=row.active_from or today,
                    )
                )
                report.created += 1
                continue
            changed = self._update(person, row, home)
            if person.active_to is not None:
                person.active_to = None
                person.active_from = row.active_from or today
                report.reactivated += 1
            elif changed:
                report.updated += 1
            else:
                report.unchanged += 1

        # Everyone still active in a home this file covers, and not in the file, has left.
        existing_ids = [
            home.id
            for key, home in self.homes.items()
            if key in self.seen_homes and key not in self.new_homes
        ]
        if not existing_ids:
            return
        query = (
            select(Person)
            .where(Person.care_home_id.in_(existing_ids), Person.active_to.is_(None))
            .order_by(Person.care_home_id, Person.family_name, Person.given_name, Person.id)
        )
        for person in self.session.scalars(query).all():
            if person.id in self.claimed_ids:
                continue
            person.active_to = today
            report.left += 1
            report.leavers.append(f"{person.full_name} ({person.care_home.name})")

    def _update(self, person: Person, row: RosterRow, home: CareHome) -> bool:
        """Assign the row's values that differ; True when anything changed."""
        changed = False
        changed |= _assign(person, "given_name", row.given_name)
        changed |= _assign(person, "role", row.role)
        if person.care_home is not home:
            person.care_home = home
            changed = True
        if row.external_id:
            changed |= _assign(person, "external_id", row.external_id)
        optional = {
            "family_name": row.family_name,
            "mobile": row.mobile,
            "email": row.email,
            "language": row.language,
        }
        for column, value in optional.items():
            if column in self.columns:
                changed |= _assign(person, column, value)
        if row.active_from is not None:
            changed |= _assign(person, "active_from", row.active_from)
        return changed


def _assign(obj: Any, attribute: str, value: Any) -> bool:
    """Set `attribute` only when it differs, so unchanged rows write nothing."""
    if getattr(obj, attribute) == value:
        return False
    setattr(obj, attribute, value)
    return True
