"""The outbox's unique key makes queueing the same message twice a no-op."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from storage.models import Invitation, OutboxItem
from surveys.invitations import open_wave
from surveys.outbox import enqueue, outbox_key

AT = dt.datetime(2027, 1, 4, 10, tzinfo=dt.UTC)


def test_enqueue_twice_inserts_one_row(session, factory):
    home = factory.home()
    factory.person(home)
    _, wave = factory.programme([home], [("staff_morale", {"roles": ["care_worker"]}, "sms")])
    open_wave(session, wave, AT)
    invitation = session.scalars(select(Invitation)).one()
    assert enqueue(session, invitation, "invitation", 0, AT) is True
    assert enqueue(session, invitation, "invitation", 0, AT) is False
    assert enqueue(session, invitation, "reminder", 1, AT) is True
    session.commit()
    rows = session.scalars(select(OutboxItem).order_by(OutboxItem.id)).all()
    assert [r.key for r in rows] == [
        outbox_key(invitation.id, "invitation"),
        outbox_key(invitation.id, "reminder", 1),
    ]
    assert session.scalar(select(func.count()).select_from(OutboxItem)) == 2
    assert rows[0].status == "queued" and rows[0].channel == "sms"
