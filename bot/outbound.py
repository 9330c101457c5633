"""Sending invitations and reminders: store the message, hand it to the transport, record
the outcome."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
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
        html: str | None = None
        headers: dict[str, str] | None = None
        if invitation.channel == "sms":
            assert person.mobile, "invitation by SMS needs a mobile"
            if is_opted_out(session, "sms", person.mobile):
                set_status(invitation, "opted_out", now, detail="opted out before sending")
                return None
            body = self._sms_body(session, invitation, now)
            if body is None:
                return None
            message = Message(
                direction="out",
                channel="sms",
                to_address=person.mobile,
                from_address=self.sms.name,
                body=body,
                status="queued",
            )
        else:
            assert person.email, "invitation by email needs an email address"
            text = self._email_text(invitation)
            message = self._email_message(invitation, text)
            html, headers = text.html, self.unsubscribe_headers(invitation)
        return self._store_and_deliver(session, message, invitation, now, html, headers)

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
        html: str | None = None
        headers: dict[str, str] | None = None
        if invitation.channel == "sms":
            if not person.mobile:
                return None
            if is_opted_out(session, "sms", person.mobile):
                set_status(invitation, "opted_out", now, detail="opted out before a reminder")
                return None
            body = self._reminder_sms_body(session, invitation, now)
            if body is None:
                return None
            message = Message(
                direction="out",
                channel="sms",
                to_address=person.mobile,
                from_address=self.sms.name,
                body=body,
                status="queued",
            )
        else:
            if not person.email:
                return None
            if is_opted_out(session, "email", person.email):
                set_status(invitation, "opted_out", now, detail="opted out before a reminder")
                return None
            text = self._reminder_email_text(invitation)
            message = self._email_message(invitation, text)
            html, headers = text.html, self.unsubscribe_headers(invitation)
        return self._store_and_deliver(session, message, invitation, now, html, headers)

    def _store_and_deliver(
        self,
        session: Session,
        message: Message,
        invitation: Invitation,
        now: dt.datetime,
        html: str | None,
        headers: dict[str, str] | None,
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

    def _reminder_email_text(self, invitation: Invitation) -> EmailText:
        person = invitation.person
        definition = definition_of(invitation.instrument_version)
        subject = invitation.subject if invitation.rater_relation != "self" else None
        return reminder_email(
            given_name=person.given_name,
            programme=invitation.wave.cohort.programme.name,
            instrument_title=definition.title,
            subject_name=subject.full_name if subject else None,
            closes=self._local_close(invitation),
            link=self.link(invitation),
            instrument_key=definition.key,
            minutes=max(2, round(len(definition.items) / 3)),
            started=invitation.status == "started",
            unsubscribe=self.unsubscribe_link(invitation),
        )

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

    def _email_text(self, invitation: Invitation) -> EmailText:
        person = invitation.person
        definition = definition_of(invitation.instrument_version)
        subject = invitation.subject if invitation.rater_relation != "self" else None
        return invitation_email(
            given_name=person.given_name,
            programme=invitation.wave.cohort.programme.name,
            instrument_title=definition.title,
            subject_name=subject.full_name if subject else None,
            closes=invitation.wave.closes_at,
            link=self.link(invitation),
            instrument_key=definition.key,
            minutes=max(2, round(len(definition.items) / 3)),
            unsubscribe=self.unsubscribe_link(invitation),
        )

    def _email_message(self, invitation: Invitation, text: EmailText) -> Message:
        person = invitation.person
        return Message(
            direction="out",
            channel="email",
            to_address=person.email or "",
            from_address=self.settings.mail_from,
            subject=text.subject,
            body=text.body,
            status="queued",
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
