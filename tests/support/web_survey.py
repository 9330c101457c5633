"""The web survey (`/s/<token>`, `/survey...`) as its tests set it up and read it back:
the 360's items in order, a morale survey opened for one care worker, and the answers
the web survey stored."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from storage.models import Answer, Invitation, Response
from surveys.invitations import open_wave

STAFF = ["deputy_manager", "nurse", "senior_care_worker", "care_worker"]
"""The staff roles a care-home survey asks (everyone but the manager)."""
ITEMS_360 = [
    "residents_involvement",
    "staff_development",
    "staff_praise",
    "listens_to_staff",
    "new_ideas",
    "interaction_quality",
    "management_quality",
    "stakeholder_influence",
    "spots_issues",
    "acts_on_feedback",
    "mentors_staff",
]
"""The appraisal_360's items, in the order the survey asks them (question 1 to 11)."""


def open_morale(session, factory, now: dt.datetime) -> Invitation:
    """Amara, a care worker at Willow Court, invited by SMS to a staff_morale wave that
    opened an hour before `now` and is open for a week; committed."""
    home = factory.home("Willow Court")
    factory.person(home, given_name="Amara")
    _, wave = factory.programme(
        [home],
        [("staff_morale", {"roles": STAFF}, "sms")],
        opens=now - dt.timedelta(hours=1),
        closes=now + dt.timedelta(days=7),
    )
    open_wave(session, wave, now)
    session.commit()
    return session.scalars(select(Invitation)).one()


def web_answers(session, invitation_id: int) -> dict[str, int | None]:
    """What the app committed for the invitation, item by item (None for a skipped one),
    seen from the test's session (its transaction ends first); every answer came from
    the web form."""
    session.rollback()
    session.expire_all()
    rows = session.execute(
        select(Answer.item_id, Answer.value, Answer.channel)
        .join(Response, Answer.response_id == Response.id)
        .where(Response.invitation_id == invitation_id)
    )
    stored = {}
    for item_id, value, channel in rows:
        assert channel == "web"
        stored[item_id] = value
    return stored
