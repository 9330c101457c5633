"""Sending invitations and reminders: store the message, hand it to the transport, record
the outcome."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import partial
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.config import Settings
from bot.transports import EmailTransport, SendError, SmsTransport
from storage.models import Invitation, Message, utcnow
from surveys import conversation
from surveys.catalogue import definition_of
from surveys.invitations import set_status
from surveys.opt_outs import is_opted_out, opt_out
from surveys.reminders import ReminderRule, wants_reminder
from surveys.sms_inbox import conversations_of, opening, survey_of, uses_conversation
from surveys.wording import (
    EmailText,
    invitation_email,
    invitation_sms,
    reminder_email,
    reminder_sms,
)

REMINDER_PREFIX = "Reminder:"
"""Put before a re-asked SMS question when it still fits one segment."""


@dataclass
class Outbound:
    """Everything needed to send: settings and the two transports."""

    settings: Settings
    sms: SmsTransport
    email: EmailTransport

    def link(self, invitation: Invitation) -> str:
        """The personal survey link of an invitation."""
        return f"{self.settings.public_base_url}/s/{invitation.token}"

    def send_invitation(
        self, session: Session, invitation: Invitation, now: dt.datetime | None = None
    ) -> Message | None:
        """Send one pending invitation by its channel; the message is stored before sending.

        Returns None when nothing is sent now: the person is already in another SMS
        conversation (this one starts when that one ends), or has opted out.
        """
        now = now or utcnow()
        person = invitation.person
        if invitation.channel == "sms":
            assert person.mobile, "invitation by SMS needs a mobile"
            if self._opted_out(session, invitation, "sms", now, "opted out before sending"):
                return None
            body = self._sms_body(session, invitation, now)
            return None if body is None else self._send_sms(session, invitation, body, now)
        assert person.email, "invitation by email needs an email address"
        return self._send_email(session, invitation, self._email_text(invitation), now)

    def send_reminder(
        self,
        session: Session,
        invitation: Invitation,
        number: int,
        now: dt.datetime | None = None,
    ) -> Message | None:
        """Send reminder `number` of an invitation; stored before sending, like an invitation.

        SMS conversation: the pending question again ("Reminder: ..." when that still fits
        one text), or the opening text if no question was answered yet; SMS link: a short
        reminder with the link; email: a reminder linking back to where they stopped.
        Returns None, sending nothing, when the invitation no longer wants a reminder
        (answered, opted out, failed, expired, wave closed, past the wave's `max`) or when
        another SMS conversation of the person's is under way.
        """
        now = now or utcnow()
        wave = invitation.wave
        rule = ReminderRule.of(wave.reminders)
        wanted = wants_reminder(invitation.status) and 1 <= number <= rule.max
        if not wanted or not wave.opens_at <= now < wave.closes_at:
            return None
        person = invitation.person
        # Unlike an invitation, a reminder may find the address gone: then it sends nothing.
        if invitation.channel == "sms":
            if not person.mobile:
                return None
            if self._opted_out(session, invitation, "sms", now, "opted out before a reminder"):
                return None
            body = self._reminder_sms_body(session, invitation, now)
            return None if body is None else self._send_sms(session, invitation, body, now)
        if not person.email:
            return None
        if self._opted_out(session, invitation, "email", now, "opted out before a reminder"):
            return None
        text = self._email_text(invitation, reminder=True)
        return self._send_email(session, invitation, text, now)

    def _opted_out(
        self, session: Session, invitation: Invitation, channel: str, now: dt.datetime, detail: str
    ) -> bool:
        """Whether the person opted out of `channel` at their address; if so the invitation
        is marked opted out (with `detail`) and nothing is to be sent."""
        person = invitation.person
        address = person.mobile if channel == "sms" else person.email
        if not is_opted_out(session, channel, address or ""):
            return False
        set_status(invitation, "opted_out", now, detail=detail)
        return True

    def _send_sms(
        self, session: Session, invitation: Invitation, body: str, now: dt.datetime
    ) -> Message:
        """Send `body` to the invitation's person by SMS (stored first, like every send)."""
        message = Message(
            direction="out",
            channel="sms",
            to_address=invitation.person.mobile,
            from_address=self.sms.name,
            body=body,
            status="queued",
        )
        return self._store_and_deliver(session, message, invitation, now)

    def _send_email(
        self, session: Session, invitation: Invitation, text: EmailText, now: dt.datetime
    ) -> Message:
        """Send `text` to the invitation's person by email, with its HTML and the
        unsubscribe headers (stored first, like every send)."""
        message = Message(
            direction="out",
            channel="email",
            to_address=invitation.person.email or "",
            from_address=self.settings.mail_from,
            subject=text.subject,
            body=text.body,
            status="queued",
        )
        headers = self.unsubscribe_headers(invitation)
        return self._store_and_deliver(session, message, invitation, now, text.html, headers)

    def _store_and_deliver(
        self,
        session: Session,
        message: Message,
        invitation: Invitation,
        now: dt.datetime,
        html: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Message:
        """Store the message first, then hand it to the provider (one path for every send)."""
        message.person, message.invitation = invitation.person, invitation
        message.created_at = message.updated_at = now
        session.add(message)
        session.flush()
        self._deliver(session, message, invitation, now, html=html, headers=headers)
        return message

    def _local_close(self, invitation: Invitation) -> dt.datetime:
        programme = invitation.wave.cohort.programme
        return invitation.wave.closes_at.astimezone(ZoneInfo(programme.timezone))

    def _reminder_sms_body(
        self, session: Session, invitation: Invitation, now: dt.datetime
    ) -> str | None:
        person = invitation.person
        if not uses_conversation(invitation):
            about = invitation.subject if invitation.rater_relation != "self" else None
            return reminder_sms(
                person.given_name,
                person.care_home.name,
                self.link(invitation),
                closes=self._local_close(invitation),
                subject=about.given_name if about else None,
            )
        # Replies go to the person's oldest live conversation: reminding them of another
        # one would have their answer recorded against the wrong question.
        live = conversations_of(session, person, now, ("sent", "delivered", "started"))
        if not live or live[0].id != invitation.id:
            return None
        state = conversation.State.from_dict(invitation.sms_state or {})
        survey = survey_of(invitation)
        if state.finished or state.position >= survey.total:
            return None
        if invitation.status == "started" or state.position > 0:
            return conversation.question(survey, state, intro=REMINDER_PREFIX)
        return opening(invitation)

    def _sms_body(self, session: Session, invitation: Invitation, now: dt.datetime) -> str | None:
        person = invitation.person
        if not uses_conversation(invitation):
            about = invitation.subject if invitation.rater_relation != "self" else None
            return invitation_sms(
                person.given_name,
                person.care_home.name,
                self.link(invitation),
                subject=about.given_name if about else None,
            )
        live = conversations_of(session, person, now, ("sent", "delivered", "started"))
        if live:
            return None  # one conversation at a time: this one waits its turn
        waiting = conversations_of(session, person, now, ("pending",))
        total = len(waiting)
        position = 1 if total > 1 else None
        return opening(invitation, position=position, total=total if total > 1 else None)

    def unsubscribe_link(self, invitation: Invitation) -> str:
        """The page that stops emails to the invitation's person (`bot.unsubscribe`)."""
        return f"{self.settings.public_base_url}/u/{invitation.token}"

    def unsubscribe_headers(self, invitation: Invitation) -> dict[str, str]:
        """RFC 2369 List-Unsubscribe (web and mailto) and RFC 8058 one-click headers."""
        return {
            "List-Unsubscribe": (
                f"<{self.unsubscribe_link(invitation)}>, "
                f"<mailto:{self.settings.mail_from}?subject=unsubscribe>"
            ),
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    def _email_text(self, invitation: Invitation, reminder: bool = False) -> EmailText:
        """The invitation's email, or with `reminder` the reminder's: the same facts about
        the invitation in `invitation_email`'s or `reminder_email`'s words."""
        definition = definition_of(invitation.instrument_version)
        subject = invitation.subject if invitation.rater_relation != "self" else None
        # Both give the closing date in the programme's time zone (a wave closing at 23:30
        # UTC in June closes on the next day in London); a reminder also thanks someone
        # who has started.
        closes = self._local_close(invitation)
        if reminder:
            words = partial(reminder_email, started=invitation.status == "started")
        else:
            words = invitation_email
        return words(
            given_name=invitation.person.given_name,
            programme=invitation.wave.cohort.programme.name,
            instrument_title=definition.title,
            subject_name=subject.full_name if subject else None,
            closes=closes,
            link=self.link(invitation),
            instrument_key=definition.key,
            minutes=max(2, round(len(definition.items) / 3)),
            unsubscribe=self.unsubscribe_link(invitation),
        )

    def _deliver(
        self,
        session: Session,
        message: Message,
        invitation: Invitation,
        now: dt.datetime,
        html: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        try:
            if message.channel == "sms":
                result = self.sms.send_sms(message.to_address, message.body or "")
            else:
                result = self.email.send_email(
                    message.to_address,
                    message.subject or "",
                    message.body or "",
                    html=html,
                    headers=headers,
                )
        except SendError as exc:
            self._failed(session, message, invitation, exc, now)
            return
        message.provider_id, message.status = result.provider_id, result.status
        set_status(invitation, "sent", now)
        if result.status == "delivered":
            set_status(invitation, "delivered", now)
        session.flush()

    def _failed(
        self,
        session: Session,
        message: Message,
        invitation: Invitation,
        exc: SendError,
        now: dt.datetime,
    ) -> None:
        message.error_code, message.error_message = exc.code, str(exc)
        message.status = "failed" if exc.permanent else "error"
        if exc.opted_out:
            opt_out(
                session,
                message.channel,
                message.to_address,
                f"provider {exc.code}",
                invitation.person,
                now,
            )
        elif exc.permanent and invitation.status != "started":
            set_status(invitation, "failed", now, detail=f"{exc.code}: {exc}")
        # A transient failure leaves the invitation pending: the next run retries it. A
        # refused reminder never fails an invitation the person has started: failing it
        # would close their half-given answers (the message keeps the provider's reply).
        session.flush()

    def send_pending(self, session: Session, now: dt.datetime | None = None) -> int:
        """Send every pending invitation of an open wave; returns how many were sent."""
        now = now or utcnow()
        pending = session.scalars(
            select(Invitation).where(Invitation.status == "pending").order_by(Invitation.id)
        ).all()
        sent = 0
        for invitation in pending:
            wave = invitation.wave
            if wave.opens_at <= now < wave.closes_at and invitation.status == "pending":
                message = self.send_invitation(session, invitation, now)
                sent += message is not None and message.status not in ("failed", "error")
        return sent
