"""The figures of the weekly management-information email: counts only, from the database.

For each wave that was open at some point in the 7 days before `end`, and each care home
(by the home of the person invited): how many invitations, how many completed (to date,
and within the week), the response rate, and, while the wave is still open, how many
people have something still to answer. No names, no answers. A home's figures from fewer
people than the programme's anonymity threshold are suppressed (`None`, with
`suppressed=True`); the all-homes line of each wave follows the same rule, and is
suppressed too when the homes suppressed in that wave hold fewer people than the threshold
between them (otherwise subtracting the homes shown would reveal them).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import CareHome, Cohort, Invitation, Person, Programme, Response, Wave

WEEK = dt.timedelta(days=7)
ALL_HOMES = "All homes"
_UNFINISHED = ("pending", "sent", "delivered", "started")


@dataclass(frozen=True)
class HomeWaveFigures:
    """One wave in one care home (or all homes). Figures are None when suppressed."""

    wave_key: str
    wave_name: str
    home: str
    wave_open: bool
    suppressed: bool
    invited: int | None = None
    completed: int | None = None
    completed_this_week: int | None = None
    still_to_answer: int | None = None

    @property
    def rate(self) -> float | None:
        """Completed over invited, 0-1; None when suppressed or nobody was invited."""
        if self.suppressed or not self.invited or self.completed is None:
            return None
        return self.completed / self.invited


@dataclass
class WeeklyFigures:
    """Everything the weekly email reports for one programme and week."""

    programme_key: str
    programme_name: str
    timezone: str
    threshold: int
    start: dt.datetime
    end: dt.datetime
    rows: list[HomeWaveFigures] = field(default_factory=list)

    @property
    def open_rows(self) -> list[HomeWaveFigures]:
        """Rows of waves still open at the end of the week."""
        return [r for r in self.rows if r.wave_open]


@dataclass
class _Tally:
    people: set[int] = field(default_factory=set)
    invited: int = 0
    completed: int = 0
    this_week: int = 0
    waiting: set[int] = field(default_factory=set)

    def add(
        self,
        person_id: int,
        status: str,
        completed_at: dt.datetime | None,
        start: dt.datetime,
        end: dt.datetime,
    ) -> None:
        self.people.add(person_id)
        self.invited += 1
        if status == "completed":
            self.completed += 1
            if completed_at is not None and start <= completed_at < end:
                self.this_week += 1
        elif status in _UNFINISHED:
            self.waiting.add(person_id)

    def figures(self, wave: Wave, home: str, wave_open: bool, threshold: int) -> HomeWaveFigures:
        if len(self.people) < threshold:
            return HomeWaveFigures(wave.key, wave.name, home, wave_open, suppressed=True)
        return HomeWaveFigures(
            wave.key,
            wave.name,
            home,
            wave_open,
            suppressed=False,
            invited=self.invited,
            completed=self.completed,
            completed_this_week=self.this_week,
            still_to_answer=len(self.waiting) if wave_open else None,
        )


def weekly_figures(session: Session, programme_key: str, end: dt.datetime) -> WeeklyFigures:
    """The programme's figures for the 7 days up to `end` (aware)."""
    programme = session.scalar(select(Programme).where(Programme.key == programme_key))
    if programme is None:
        raise LookupError(f"no programme with key {programme_key!r}")
    start = end - WEEK
    figures = WeeklyFigures(
        programme_key=programme.key,
        programme_name=programme.name,
        timezone=programme.timezone,
        threshold=programme.anonymity_threshold,
        start=start,
        end=end,
    )
    waves = session.scalars(
        select(Wave)
        .join(Cohort, Wave.cohort_id == Cohort.id)
        .where(Cohort.programme_id == programme.id, Wave.opens_at < end, Wave.closes_at > start)
        .order_by(Wave.opens_at, Cohort.key, Wave.key)
    ).all()
    for wave in waves:
        rows = session.execute(
            select(Invitation.person_id, Invitation.status, CareHome.name, Response.completed_at)
            .join(Person, Invitation.person_id == Person.id)
            .join(CareHome, Person.care_home_id == CareHome.id)
            .outerjoin(Response, Response.invitation_id == Invitation.id)
            .where(Invitation.wave_id == wave.id)
        ).all()
        if not rows:
            continue
        wave_open = wave.closes_at > end
        homes: dict[str, _Tally] = {}
        everyone = _Tally()
        for person_id, status, home, completed_at in rows:
            homes.setdefault(home, _Tally()).add(person_id, status, completed_at, start, end)
            everyone.add(person_id, status, completed_at, start, end)
        hidden: set[int] = set()
        for home in sorted(homes, key=str.casefold):
            row = homes[home].figures(wave, home, wave_open, figures.threshold)
            figures.rows.append(row)
            if row.suppressed:
                hidden |= homes[home].people
        total = everyone.figures(wave, ALL_HOMES, wave_open, figures.threshold)
        if 0 < len(hidden) < figures.threshold:
            # All homes minus the homes shown would give away the suppressed homes' figures.
            total = HomeWaveFigures(wave.key, wave.name, ALL_HOMES, wave_open, suppressed=True)
        figures.rows.append(total)
    return figures
