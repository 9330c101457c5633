"""Recording answers, whichever channel they came through.

Every answer is checked against the instrument version the invitation was for; the
database's unique (response, item) key makes a repeated answer an update, never a second row.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import Answer, Invitation, Response, utcnow
from surveys.catalogue import definition_of
from surveys.invitations import set_status


class AnswerError(ValueError):
    """An answer that does not fit the question; the message says which and why."""


def start_response(
    session: Session, invitation: Invitation, channel: str, at: dt.datetime | None = None
) -> Response:
    """The invitation's response, created (and the invitation marked started) on first use."""
    response = session.scalar(select(Response).where(Response.invitation_id == invitation.id))
    if response is None:
        at = at or utcnow()
        response = Response(invitation=invitation, channel=channel, started_at=at)
        session.add(response)
        set_status(invitation, "started", at)
        session.flush()
    return response


def record_answer(
    session: Session,
    invitation: Invitation,
    item_id: str,
    value: int | None,
    channel: str,
    at: dt.datetime | None = None,
) -> Answer:
    """Store (or change) the answer to one item; `None` records a skipped item."""
    if invitation.status in ("expired", "opted_out", "failed"):
        raise AnswerError(f"invitation is {invitation.status}; answers are closed")
    definition = definition_of(invitation.instrument_version)
    try:
        item = definition.item(item_id)
    except KeyError:
        raise AnswerError(f"{definition.key} has no item {item_id!r}") from None
    if value is not None and not item.scale.min <= value <= item.scale.max:
        raise AnswerError(
            f"{item_id}: {value} is outside the scale {item.scale.min}-{item.scale.max}"
        )
    at = at or utcnow()
    response = start_response(session, invitation, channel, at)
    answer = session.scalar(
        select(Answer).where(Answer.response_id == response.id, Answer.item_id == item_id)
    )
    if answer is None:
        answer = Answer(response=response, item_id=item_id, value=value, channel=channel)
        answer.answered_at = at
        session.add(answer)
    elif answer.value != value:
        answer.value, answer.channel, answer.answered_at = value, channel, at
    session.flush()
    return answer


def complete_response(
    session: Session, invitation: Invitation, at: dt.datetime | None = None
) -> Response:
    """Mark the invitation's response complete."""
    at = at or utcnow()
    response = start_response(session, invitation, invitation.channel, at)
    if response.completed_at is None:
        response.completed_at = at
    set_status(invitation, "completed", at)
    session.flush()
    return response
