"""The words carepulse sends: invitation texts and emails. Pure functions of their inputs."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

# The GSM helpers live in surveys.sms; they are re-exported here for existing callers.
from surveys.sms import fit_one_segment as fit_one_segment
from surveys.sms import gsm_safe as gsm_safe


@dataclass(frozen=True)
class EmailText:
    """An email's subject and plain-text body."""

    subject: str
    body: str


def first_name(name: str) -> str:
    """The first word of a given name, for a friendly greeting."""
    return name.split()[0] if name.split() else "there"


SMS_SEGMENT = 160
"""Characters in one GSM-7 SMS segment (see :mod:`surveys.sms` for the full arithmetic)."""


def invitation_sms(given_name: str, home: str, link: str) -> str:
    """A one-segment SMS invitation with the survey link and how to opt out."""
    name = first_name(given_name)
    return fit_one_segment(
        f"Hi {name}, a 2-min survey about {home}: {link} Reply STOP to opt out",
        f"Hi {name}, a 2-min survey about your care home: {link} Reply STOP to opt out",
        f"Hi, a 2-min survey about your care home: {link} Reply STOP to opt out",
    )


def invitation_email(
    *,
    given_name: str,
    programme: str,
    instrument_title: str,
    subject_name: str | None,
    closes: dt.datetime,
    link: str,
) -> EmailText:
    """The invitation email: who asks, what, about whom, by when, and the personal link."""
    about = f" about {subject_name}" if subject_name else ""
    closing = closes.strftime("%A %-d %B %Y")
    body = (
        f"Dear {first_name(given_name)},\n\n"
        f"As part of {programme}, we would be grateful if you could answer a short "
        f'survey, "{instrument_title}"{about}. It takes about 5 minutes.\n\n'
        f"Your personal link (please do not forward it):\n{link}\n\n"
        f"The survey closes on {closing}. You can stop and come back to it from the same "
        "link until then.\n\nThank you,\nThe programme team\n"
    )
    return EmailText(subject=f"{programme}: {instrument_title} (closes {closing})", body=body)
