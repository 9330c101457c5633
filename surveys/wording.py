"""The words carepulse sends: invitation texts and emails. Pure functions of their inputs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from markupsafe import escape

# The GSM helpers live in surveys.sms; they are re-exported here for existing callers.
from surveys.sms import fit_one_segment as fit_one_segment
from surveys.sms import gsm_safe as gsm_safe


@dataclass(frozen=True)
class EmailText:
    """An email's subject, plain-text body and the same words as simple HTML."""

    subject: str
    body: str
    html: str = ""


def first_name(name: str) -> str:
    """The first word of a given name, for a friendly greeting."""
    return name.split()[0] if name.split() else "there"


SMS_SEGMENT = 160
"""Characters in one GSM-7 SMS segment (see :mod:`surveys.sms` for the full arithmetic)."""


def invitation_sms(given_name: str, home: str, link: str, subject: str | None = None) -> str:
    """A one-segment SMS invitation with the survey link and how to opt out.

    `subject` is the name of the manager a 360 rater is asked about.
    """
    name = first_name(given_name)
    about = (
        [
            f"Hi {name}, how does {first_name(subject)} lead {home}? A 5-min survey: {link} "
            "Reply STOP to opt out",
            f"Hi {name}, how does {first_name(subject)} lead your home? A 5-min survey: "
            f"{link} Reply STOP to opt out",
        ]
        if subject
        else []
    )
    return fit_one_segment(
        *about,
        f"Hi {name}, a 2-min survey about {home}: {link} Reply STOP to opt out",
        f"Hi {name}, a 2-min survey about your care home: {link} Reply STOP to opt out",
        f"Hi, a 2-min survey about your care home: {link} Reply STOP to opt out",
    )


# What an invitation asks, by instrument key; others are named by their title.
_ASKS = {
    "manager_self_report": "your self-report",
    "appraisal_360": "the 360-degree appraisal",
}


def _what_is_asked(
    instrument_key: str | None, instrument_title: str, subject_name: str | None
) -> str:
    about = f" about {subject_name}" if subject_name else ""
    if instrument_key == "appraisal_360" and not subject_name:
        return "your self-rating for the 360-degree appraisal"
    if instrument_key in _ASKS:
        return _ASKS[instrument_key] + about
    return f'the survey "{instrument_title}"{about}'


_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{subject}</title>
</head>
<body style="margin:0;padding:0;background:#ffffff;color:#1a1a1a;\
font-family:Arial,Helvetica,sans-serif;font-size:16px;line-height:1.5">
<div role="article" aria-label="{subject}" lang="en" style="max-width:600px;padding:16px">
<h1 style="font-size:24px;line-height:1.3;margin:0 0 16px">{heading}</h1>
<p>Dear {name},</p>
<p>{opening}</p>
<p>The survey closes on <strong>{closing}</strong>.</p>
<p style="margin:24px 0"><a href="{link}" style="display:inline-block;background:#1d70b8;\
color:#ffffff;padding:12px 20px;border-radius:4px;font-weight:bold;text-decoration:none">\
{button}</a></p>
<p>If the button does not work, copy this personal link into your browser \
(please do not forward it):<br><a href="{link}" style="color:#1d70b8">{link}</a></p>
{note}<p>Thank you,<br>The programme team</p>
{footer}</div>
</body>
</html>
"""

_HTML_FOOTER = """<hr style="border:0;border-top:1px solid #b1b4b6;margin:24px 0 12px">
<p style="font-size:14px;color:#505a5f">You are getting this email because you take part \
in {programme}. To stop emails about this programme, \
<a href="{unsubscribe}" style="color:#1d70b8">unsubscribe here</a>: {unsubscribe}</p>
"""

_COME_BACK = "You can stop and come back from the same link until the survey closes."


def _email(
    *,
    subject: str,
    heading: str,
    name: str,
    opening: str,
    closing: str,
    link: str,
    button: str,
    programme: str,
    unsubscribe: str | None,
    note: str | None = None,
) -> EmailText:
    """An email around its own words (`heading`, `opening`, the `button`'s label and an
    optional `note` after the link): the greeting, the closing date, the personal link, the
    sign-off and, with `unsubscribe`, how to stop these emails. The HTML says the same as
    the plain text, with every value escaped."""
    stop = (
        f"\n---\nYou are getting this email because you take part in {programme}. "
        f"To stop emails about this programme, unsubscribe here:\n{unsubscribe}\n"
        if unsubscribe
        else ""
    )
    body = (
        f"Dear {name},\n\n{opening}\n\n"
        f"The survey closes on {closing}.\n\n"
        f"Your personal link (please do not forward it):\n{link}\n\n"
        + (f"{note}\n\n" if note else "")
        + f"Thank you,\nThe programme team\n{stop}"
    )
    footer = (
        _HTML_FOOTER.format(programme=escape(programme), unsubscribe=escape(unsubscribe))
        if unsubscribe
        else ""
    )
    html = _HTML.format(
        subject=escape(subject),
        heading=escape(heading),
        name=escape(name),
        opening=escape(opening),
        closing=escape(closing),
        link=escape(link),
        button=escape(button),
        note=f"<p>{escape(note)}</p>\n" if note else "",
        footer=footer,
    )
    return EmailText(subject=subject, body=body, html=html)


def invitation_email(
    *,
    given_name: str,
    programme: str,
    instrument_title: str,
    subject_name: str | None,
    closes: dt.datetime,
    link: str,
    instrument_key: str | None = None,
    minutes: int = 5,
    unsubscribe: str | None = None,
) -> EmailText:
    """The invitation email: who asks, what, about whom, by when, and the personal link.

    `instrument_key` names what is asked in plain words ("your self-report", "the
    360-degree appraisal about Margaret Okafor"); `unsubscribe` adds how to stop these
    emails. The HTML says the same as the plain text, with every value escaped.
    """
    what = _what_is_asked(instrument_key, instrument_title, subject_name)
    # A plain description ("your self-report") is followed by the survey's own title.
    titled = f' ("{instrument_title}")' if instrument_key in _ASKS else ""
    closing = closes.strftime("%A %-d %B %Y")
    return _email(
        subject=f"{programme}: {instrument_title} (closes {closing})",
        heading=f"Please complete {what}",
        name=first_name(given_name),
        opening=(
            f"As part of {programme}, we would be grateful if you could complete "
            f"{what}{titled}. It takes about {minutes} minutes."
        ),
        closing=closing,
        link=link,
        button="Start the survey",
        programme=programme,
        unsubscribe=unsubscribe,
        note=_COME_BACK,
    )


def reminder_sms(
    given_name: str,
    home: str,
    link: str,
    closes: dt.datetime | None = None,
    subject: str | None = None,
) -> str:
    """A one-segment SMS reminder with the survey link and how to opt out.

    `closes` (local time) says until when the survey is open; `subject` is the manager a
    360 rater is asked about. Longer forms give way to shorter ones until one fits.
    """
    name = first_name(given_name)
    until = f" until {closes:%a %-d %b}" if closes else ""
    stop = "Reply STOP to opt out"
    about = (
        [
            f"Hi {name}, a reminder: how does {first_name(subject)} lead {home}? "
            f"The survey is open{until}: {link} {stop}",
            f"Hi {name}, a reminder: how does {first_name(subject)} lead your home? "
            f"Survey open{until}: {link} {stop}",
        ]
        if subject
        else []
    )
    return fit_one_segment(
        *about,
        f"Hi {name}, a reminder: your survey about {home} is open{until}: {link} {stop}",
        f"Hi {name}, a reminder: your survey is open{until}: {link} {stop}",
        f"Hi {name}, a reminder: your survey is still open: {link} {stop}",
        f"Reminder: your survey is still open: {link} {stop}",
    )


def reminder_email(
    *,
    given_name: str,
    programme: str,
    instrument_title: str,
    subject_name: str | None,
    closes: dt.datetime,
    link: str,
    instrument_key: str | None = None,
    minutes: int = 5,
    started: bool = False,
    unsubscribe: str | None = None,
) -> EmailText:
    """A reminder email: what is still waiting, by when, and the link back to it.

    With `started`, it thanks the person for starting and says the link takes them back to
    where they stopped (their answers so far are kept). `closes` is in local time. The HTML
    says the same as the plain text, with every value escaped.
    """
    what = _what_is_asked(instrument_key, instrument_title, subject_name)
    closing = closes.strftime("%A %-d %B %Y")
    if started:
        heading = f"Please finish {what}"
        opening = (
            f"Thank you for starting {what} for {programme}. Your answers so far are saved: "
            "the link below takes you back to where you stopped."
        )
        button = "Continue the survey"
    else:
        heading = f"Reminder: please complete {what}"
        opening = (
            f"A reminder that {what} for {programme} is still waiting for you. "
            f"It takes about {minutes} minutes."
        )
        button = "Start the survey"
    return _email(
        subject=f"Reminder: {programme}: {instrument_title} (closes {closing})",
        heading=heading,
        name=first_name(given_name),
        opening=opening,
        closing=closing,
        link=link,
        button=button,
        programme=programme,
        unsubscribe=unsubscribe,
    )
