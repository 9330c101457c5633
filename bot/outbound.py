"""Sending invitations: store the message, hand it to the transport, record the outcome."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.config import Settings
from bot.transports import EmailTransport, SmsTransport
from storage.models import Invitation, Message, utcnow
from surveys.invitations import set_status
from surveys.wording import invitation_email, invitation_sms


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
    ) -> Message:
        """Send one pending invitation by its channel; the message is stored before sending."""
        now = now or utcnow()
        person = invitation.person
        programme = invitation.wave.cohort.programme
        if invitation.channel == "sms":
            assert person.mobile, "invitation by SMS needs a mobile"
            body = invitation_sms(person.given_name, person.care_home.name, self.link(invitation))
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
            definition = invitation.instrument_version.definition
            text = invitation_email(
                given_name=person.given_name,
                programme=programme.name,
                instrument_title=definition["title"],
                subject_name=invitation.subject.full_name
                if invitation.subject and invitation.rater_relation != "self"
                else None,
                closes=invitation.wave.closes_at,
                link=self.link(invitation),
            )
            message = Message(
                direction="out",
                channel="email",
                to_address=person.email,
                from_address=self.settings.mail_from,
                subject=text.subject,
                body=text.body,
                status="queued",
            )
        message.person = person
        message.invitation = invitation
        message.created_at = message.updated_at = now
        session.add(message)
        session.flush()
        if message.channel == "sms":
            result = self.sms.send_sms(message.to_address, message.body or "")
        else:
            result = self.email.send_email(
                message.to_address, message.subject or "", message.body or ""
            )
        message.provider_id, message.status = result.provider_id, result.status
        set_status(invitation, "sent", now)
        if result.status == "delivered":
            set_status(invitation, "delivered", now)
        session.flush()
        return message

    def send_pending(self, session: Session, now: dt.datetime | None = None) -> int:
        """Send every pending invitation of an open wave; returns how many were sent."""
        now = now or utcnow()
        pending = session.scalars(
            select(Invitation).where(Invitation.status == "pending").order_by(Invitation.id)
        ).all()
        sent = 0
        for invitation in pending:
            wave = invitation.wave
            if wave.opens_at <= now < wave.closes_at:
                self.send_invitation(session, invitation, now)
                sent += 1
        return sent
