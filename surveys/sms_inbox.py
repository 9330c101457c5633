"""The SMS conversation with the database around it: one inbound text in, replies out.

`surveys.conversation` decides what a reply means and what to say; this module finds
whose text it is and which survey it answers, stores the answer, moves the invitation on,
and starts the person's next open survey when one finishes, so that someone with two
surveys open is asked one at a time. Every channel (Twilio's webhook, the development
phone) comes through `handle_inbound`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, selectinload

from storage.models import Cohort, Invitation, Message, Person, Wave, utcnow
from surveys import conversation
from surveys.answers import complete_response, record_answer
from surveys.catalogue import definition_of
from surveys.invitations import set_status
from surveys.opt_outs import is_opted_out, opt_in, opt_out

MAX_TRIES = 2
"""Failed replies to one question before it is left unanswered and the conversation moves on."""

CONVERSATION_MAX_ITEMS = 5
"""Instruments up to this length are asked by text by default; longer ones get a link."""

SMS_TITLE_MAX = 28
_LIVE = ("sent", "delivered", "started")


@dataclass(frozen=True)
class InboundSms:
    """One text received: who from, to which number, what it said, the provider's id."""

    from_number: str
    to_number: str
    body: str
    provider_id: str | None


@dataclass
class InboundResult:
    """What handling a text did: the replies to send, and whether it was a duplicate."""

    replies: list[str] = field(default_factory=list)
    duplicate: bool = False
    keyword: str | None = None
    message: Message | None = None


def uses_conversation(invitation: Invitation) -> bool:
    """Whether an SMS invitation is answered by replying to texts (rather than by a link)."""
    if invitation.channel != "sms":
        return False
    item = next(
        (
            wi
            for wi in invitation.wave.instruments
            if wi.instrument_version_id == invitation.instrument_version_id
        ),
        None,
    )
    mode = item.sms_mode if item else None
    if mode:
        return mode == "conversation"
    return len(invitation.instrument_version.definition["items"]) <= CONVERSATION_MAX_ITEMS


def survey_of(invitation: Invitation) -> conversation.Survey:
    """The engine's view of an invitation's survey."""
    definition = definition_of(invitation.instrument_version)
    # A long title would push the person's name out of a one-segment opening text.
    title = definition.title if len(definition.title) <= SMS_TITLE_MAX else ""
    return conversation.Survey(
        title=title, instrument=definition, relation=invitation.rater_relation
    )


def signposts_of(invitation: Invitation) -> list[conversation.Signpost]:
    """The programme's support messages for this invitation's instrument."""
    settings = invitation.wave.cohort.programme.settings or {}
    key = invitation.instrument_version.definition["key"]
    return [
        conversation.Signpost(
            id=s["id"],
            instrument=s["instrument"],
            item_id=s["item"],
            values=frozenset(s["values"]),
            message=s["message"],
        )
        for s in settings.get("signposts", [])
        if s["instrument"] == key
    ]


def conversations_of(
    session: Session, person: Person, now: dt.datetime, statuses: tuple[str, ...]
) -> list[Invitation]:
    """The person's SMS-conversation invitations in open waves with these statuses, oldest first."""
    rows = session.scalars(
        select(Invitation)
        .join(Wave, Invitation.wave_id == Wave.id)
        .where(
            Invitation.person_id == person.id,
            Invitation.channel == "sms",
            Invitation.status.in_(statuses),
            Wave.opens_at <= now,
            Wave.closes_at > now,
        )
        .order_by(Invitation.id)
        # Everything a reply needs, in this one round trip rather than five lazy loads.
        .options(
            joinedload(Invitation.wave).joinedload(Wave.cohort).joinedload(Cohort.programme),
            joinedload(Invitation.instrument_version),
            selectinload(Invitation.wave, Wave.instruments),
        )
        .with_for_update(of=Invitation)
    ).all()
    return [i for i in rows if uses_conversation(i)]


def opening(invitation: Invitation, position: int | None = None, total: int | None = None) -> str:
    """The first text of a conversation: greeting and first question, one segment."""
    person = invitation.person
    state, text = conversation.start(
        survey_of(invitation),
        person.given_name,
        person.care_home.name,
        position=position,
        total=total,
    )
    invitation.sms_state = state.to_dict()
    return text


def _store_inbound(
    session: Session, sms: InboundSms, person: Person | None, now: dt.datetime
) -> Message | None:
    """Store the inbound text first: a retried webhook with the same id stops here."""
    message = Message(
        direction="in",
        channel="sms",
        person=person,
        from_address=sms.from_number,
        to_address=sms.to_number,
        body=sms.body,
        provider_id=sms.provider_id,
        status="received",
        created_at=now,
        updated_at=now,
    )
    try:
        with session.begin_nested():
            session.add(message)
            session.flush()
    except IntegrityError:
        return None
    return message


def handle_inbound(
    session: Session, sms: InboundSms, now: dt.datetime | None = None, contact: str | None = None
) -> InboundResult:
    """Handle one inbound text; flushes, the caller commits."""
    now = now or utcnow()
    person = session.scalar(select(Person).where(Person.mobile == sms.from_number))
    message = _store_inbound(session, sms, person, now)
    if message is None:
        return InboundResult(duplicate=True)
    result = InboundResult(message=message, keyword=conversation.keyword(sms.body))
    if result.keyword == "stop":
        opt_out(session, "sms", sms.from_number, sms.body.strip().upper()[:32], person, now)
        result.replies.append(conversation.stopped_reply())
    elif result.keyword == "start":
        opt_in(session, "sms", sms.from_number, now)
        result.replies.append(conversation.restarted_reply())
    elif is_opted_out(session, "sms", sms.from_number):
        pass  # never text someone who said STOP, whatever they send
    elif person is None:
        result.replies.append(conversation.unknown_number_reply())
    elif result.keyword == "help":
        result.replies.append(_help(session, person, now, contact))
    else:
        result.replies.extend(_answer(session, person, sms.body, now))
    session.flush()
    return result


def _help(session: Session, person: Person, now: dt.datetime, contact: str | None) -> str:
    live = conversations_of(session, person, now, _LIVE + ("pending",))
    programme = live[0].wave.cohort.programme if live else None
    settings = programme.settings if programme else {}
    return conversation.help_reply(
        programme.name if programme else "your care home's improvement programme",
        (settings or {}).get("contact") or contact or "your manager",
    )


def _answer(session: Session, person: Person, body: str, now: dt.datetime) -> list[str]:
    open_ = conversations_of(session, person, now, (*_LIVE, "pending"))
    live = [i for i in open_ if i.status in _LIVE]
    waiting = [i for i in open_ if i.status == "pending"]
    if not live:
        return [conversation.nothing_open_reply(person.given_name)]
    invitation = live[0]
    state = conversation.State.from_dict(invitation.sms_state or {})
    outcome = conversation.step(
        survey_of(invitation),
        state,
        body,
        max_tries=MAX_TRIES,
        signposts=signposts_of(invitation),
        first_name=person.given_name,
        more_surveys=bool(waiting) or len(live) > 1,
    )
    invitation.sms_state = outcome.state.to_dict()
    if outcome.answer is not None:
        item_id, value = outcome.answer
        record_answer(session, invitation, item_id, value, "sms", now)
    elif invitation.status in ("sent", "delivered"):
        set_status(invitation, "started", now)
    replies = list(outcome.replies)
    if outcome.finished and invitation.status != "completed":
        complete_response(session, invitation, now)
        replies.extend(_start_next(waiting, now))
    return replies


def _start_next(waiting: list[Invitation], now: dt.datetime) -> list[str]:
    """Start the person's next waiting conversation, if any, right after one finishes."""
    if not waiting:
        return []
    invitation = waiting[0]
    text = opening(invitation)
    set_status(invitation, "sent", now)
    return [text]


def record_replies(
    session: Session,
    person: Person | None,
    to: str,
    sender: str,
    replies: list[str],
    status: str,
    now: dt.datetime,
) -> list[Message]:
    """Store the bot's replies to an inbound text in the message log."""
    rows = [
        Message(
            direction="out",
            channel="sms",
            person=person,
            to_address=to,
            from_address=sender,
            body=body,
            status=status,
            created_at=now,
            updated_at=now,
        )
        for body in replies
    ]
    session.add_all(rows)
    session.flush()
    return rows
