"""The weekly management-information email to a programme's leads.

Every Monday at 08:00 in the programme's time zone (`carepulse clock`), or at once with
`carepulse weekly-mail`, each address in the programme's `leads` gets the last 7 days'
response rates by wave and care home and how many people still have something to answer:
counts only (`reports.weekly`), never a name. Each email is stored as a message (email,
out) before it goes through the configured email transport.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from markupsafe import escape
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.config import Settings
from bot.transports import EmailTransport, SendError
from reports.weekly import HomeWaveFigures, WeeklyFigures, weekly_figures
from storage.models import Message, Programme, utcnow
from surveys.wording import EmailText

SUPPRESSED = "suppressed"


@dataclass
class WeeklyMailReport:
    """What sending one programme's weekly email did."""

    programme_key: str
    messages: list[Message] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the CLI and the clock's log."""
        if not self.messages and not self.skipped:
            return f"programme {self.programme_key}: no leads set (programme file: leads)"
        sent = [f"{m.to_address} ({m.status})" for m in self.messages]
        parts = [f"programme {self.programme_key}: weekly email to {', '.join(sent) or 'nobody'}"]
        if self.skipped:
            parts.append(f"already sent this week to {', '.join(self.skipped)}")
        return "; ".join(parts)


def _when(value: dt.datetime, tz: ZoneInfo) -> str:
    return value.astimezone(tz).strftime("%A %-d %B %Y, %H:%M")


def _cells(row: HomeWaveFigures) -> list[str]:
    """Invited, completed, rate, this week: the response-rate columns of a row."""
    if row.suppressed:
        return [SUPPRESSED] * 4
    rate = row.rate
    return [
        str(row.invited),
        str(row.completed),
        "-" if rate is None else f"{rate:.0%}",
        str(row.completed_this_week),
    ]


def _waiting(row: HomeWaveFigures) -> str:
    return SUPPRESSED if row.suppressed else str(row.still_to_answer)


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def _grouped(rows: list[HomeWaveFigures]) -> list[tuple[str, list[HomeWaveFigures]]]:
    groups: dict[tuple[str, str], list[HomeWaveFigures]] = {}
    for row in rows:
        groups.setdefault((row.wave_key, row.wave_name), []).append(row)
    return [(name, items) for (_, name), items in groups.items()]


RATE_HEADER = ["Wave / care home", "Invited", "Completed", "Rate", "This week"]
WAITING_HEADER = ["Wave / care home", "People still to answer"]


def compose(figures: WeeklyFigures) -> EmailText:
    """The weekly email's subject, plain text and HTML (every value escaped)."""
    tz = ZoneInfo(figures.timezone)
    end_day = figures.end.astimezone(tz)
    subject = f"{figures.programme_name}: weekly survey figures to {end_day:%-d %B %Y}"
    period = f"the 7 days to {_when(figures.end, tz)} ({figures.timezone})"
    rule = (
        f"Counts only, no names. Figures from fewer than {figures.threshold} people "
        f'are shown as "{SUPPRESSED}".'
    )
    rate_rows: list[list[str]] = []
    waiting_rows: list[list[str]] = []
    for name, rows in _grouped(figures.rows):
        rate_rows.append([name, "", "", "", ""])
        rate_rows += [[f"  {r.home}", *_cells(r)] for r in rows]
    for name, rows in _grouped(figures.open_rows):
        waiting_rows.append([name, ""])
        waiting_rows += [[f"  {r.home}", _waiting(r)] for r in rows]
    body = [
        f"Weekly survey figures: {figures.programme_name}",
        f"For {period}.",
        rule,
        "",
        "Response rates by wave and care home (waves open during the week; completed to",
        'date, and within the week under "This week")',
        "",
        _text_table(RATE_HEADER, rate_rows) if rate_rows else "No wave was open this week.",
        "",
        "People still to answer, by wave and care home (waves still open)",
        "",
        _text_table(WAITING_HEADER, waiting_rows) if waiting_rows else "No wave is open now.",
        "",
        "This email is sent every Monday at 08:00 to the programme's leads.",
        "",
    ]
    html = _html(subject, figures.programme_name, period, rule, figures)
    return EmailText(subject=subject, body="\n".join(body), html=html)


_CELL = 'style="padding:4px 8px;border-bottom:1px solid #b1b4b6;text-align:{align}"'


def _html_table(header: list[str], groups: list[tuple[str, list[list[str]]]]) -> str:
    head = "".join(
        f'<th scope="col" {_CELL.format(align="left" if i == 0 else "right")}>{escape(h)}</th>'
        for i, h in enumerate(header)
    )
    body = []
    for name, rows in groups:
        body.append(
            f'<tr><th scope="rowgroup" colspan="{len(header)}" '
            f"{_CELL.format(align='left')}>{escape(name)}</th></tr>"
        )
        for cells in rows:
            row = f'<th scope="row" {_CELL.format(align="left")}>{escape(cells[0])}</th>'
            row += "".join(f"<td {_CELL.format(align='right')}>{escape(c)}</td>" for c in cells[1:])
            body.append(f"<tr>{row}</tr>")
    return (
        '<table style="border-collapse:collapse;margin:8px 0 24px">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


def _html(subject: str, programme: str, period: str, rule: str, figures: WeeklyFigures) -> str:
    rates = [(name, [[r.home, *_cells(r)] for r in rows]) for name, rows in _grouped(figures.rows)]
    waiting = [
        (name, [[r.home, _waiting(r)] for r in rows]) for name, rows in _grouped(figures.open_rows)
    ]
    rate_part = _html_table(RATE_HEADER, rates) if rates else "<p>No wave was open this week.</p>"
    waiting_part = (
        _html_table(WAITING_HEADER, waiting) if waiting else "<p>No wave is open now.</p>"
    )
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(subject)}</title>\n</head>\n"
        '<body style="margin:0;padding:16px;color:#1a1a1a;'
        'font-family:Arial,Helvetica,sans-serif;font-size:16px;line-height:1.5">\n'
        f'<h1 style="font-size:24px;margin:0 0 16px">Weekly survey figures: '
        f"{escape(programme)}</h1>\n"
        f"<p>For {escape(period)}.</p>\n<p>{escape(rule)}</p>\n"
        '<h2 style="font-size:19px">Response rates by wave and care home</h2>\n'
        "<p>Waves open during the week; completed to date, and within the week under "
        "&ldquo;This week&rdquo;.</p>\n"
        f"{rate_part}\n"
        '<h2 style="font-size:19px">People still to answer (waves still open)</h2>\n'
        f"{waiting_part}\n"
        "<p>This email is sent every Monday at 08:00 to the programme&rsquo;s leads.</p>\n"
        "</body>\n</html>\n"
    )


def send_weekly_mail(
    session: Session,
    settings: Settings,
    email: EmailTransport,
    programme_key: str,
    now: dt.datetime | None = None,
    *,
    once_a_week: bool = False,
) -> WeeklyMailReport:
    """Compose the programme's weekly email and send it to each lead; flushes, no commit.

    With `once_a_week` (the clock's job), a lead who already got this week's email (same
    subject) is skipped, so a second clock does not send it twice.
    """
    now = now or utcnow()
    programme = session.scalar(select(Programme).where(Programme.key == programme_key))
    if programme is None:
        raise LookupError(f"no programme with key {programme_key!r}")
    report = WeeklyMailReport(programme_key)
    leads = list((programme.settings or {}).get("leads") or [])
    if not leads:
        return report
    text = compose(weekly_figures(session, programme_key, now))
    for lead in leads:
        if once_a_week and _already_sent(session, lead, text.subject):
            report.skipped.append(lead)
            continue
        message = Message(
            direction="out",
            channel="email",
            to_address=lead,
            from_address=settings.mail_from,
            subject=text.subject,
            body=text.body,
            status="queued",
            created_at=now,
            updated_at=now,
        )
        session.add(message)
        session.flush()
        try:
            result = email.send_email(lead, text.subject, text.body, html=text.html)
        except SendError as exc:
            message.status = "failed" if exc.permanent else "error"
            message.error_code, message.error_message = exc.code, str(exc)
        else:
            message.provider_id, message.status = result.provider_id, result.status
        session.flush()
        report.messages.append(message)
    return report


def _already_sent(session: Session, to: str, subject: str) -> bool:
    return (
        session.scalar(
            select(Message.id)
            .where(
                Message.direction == "out",
                Message.channel == "email",
                Message.to_address == to,
                Message.subject == subject,
                Message.status.not_in(("failed", "error")),
            )
            .limit(1)
        )
        is not None
    )


def programmes_in(session: Session, timezone: str) -> list[str]:
    """Keys of the programmes whose time zone is `timezone`."""
    return list(
        session.scalars(
            select(Programme.key).where(Programme.timezone == timezone).order_by(Programme.key)
        )
    )
