"""The demo programme: the sample roster and programme under `examples/`, run through the
same code paths a real programme uses (roster import, programme loading, wave opening,
sending, answering, reporting), with simulated respondents.

The sample programme's dates are moved so that its baseline opens now: the shape of the
schedule (gaps between waves, how long each stays open) is kept exactly.
"""

from __future__ import annotations

import datetime as dt
import random
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from bot.clock import TickReport, due_work
from bot.outbound import Outbound
from storage.accounts import create_account
from storage.models import Account, Invitation, Programme, Wave, utcnow
from storage.roster import import_roster
from surveys.answers import complete_response, record_answer
from surveys.catalogue import definition_of
from surveys.programme import load_programme

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROSTER = EXAMPLES / "roster.csv"
PROGRAMME = EXAMPLES / "programme.yaml"
DEMO_SEND_WINDOW = {"start": "00:00", "end": "23:59"}


def _shifted_programme(now: dt.datetime, folder: Path) -> Path:
    """A copy of the sample programme file whose first wave opens at `now`."""
    data: dict[str, Any] = yaml.safe_load(PROGRAMME.read_text(encoding="utf-8"))
    tz = ZoneInfo(data["programme"].get("timezone", "Europe/London"))
    waves = [w for c in data["cohorts"] for w in c["waves"]]
    first = min(_local(w["opens"], tz) for w in waves)
    start = now.astimezone(tz).replace(second=0, microsecond=0) - dt.timedelta(minutes=1)
    shift = start - first
    for cohort in data["cohorts"]:
        if isinstance(cohort.get("starts_on"), dt.date):
            cohort["starts_on"] = cohort["starts_on"] + dt.timedelta(days=shift.days)
    for wave in waves:
        for name in ("opens", "closes"):
            wave[name] = (_local(wave[name], tz) + shift).strftime("%Y-%m-%d %H:%M")
    # The development phone and mailbox are nobody's: the demo sends at any hour rather
    # than holding its texts for the programme's daytime sending window.
    data["programme"]["send_window"] = DEMO_SEND_WINDOW
    path = folder / "programme.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _local(value: Any, tz: Any) -> dt.datetime:
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
    return when.replace(tzinfo=tz) if when.tzinfo is None else when.astimezone(tz)


def load_samples(session: Session, now: dt.datetime) -> None:
    """Import the sample roster and the sample programme, its first wave opening at `now`."""
    report = import_roster(session, ROSTER, today=now.date())
    if not report.imported:
        raise RuntimeError(f"the sample roster did not import:\n{report.summary()}")
    with tempfile.TemporaryDirectory() as folder:
        load_programme(session, _shifted_programme(now, Path(folder)))


def seed(session: Session, outbound: Outbound, now: dt.datetime | None = None) -> TickReport:
    """Load the samples, open what is due and send its invitations."""
    now = now or utcnow()
    load_samples(session, now)
    return due_work(session, outbound, now)


def is_empty(session: Session) -> bool:
    """True when no programme has been loaded yet."""
    return session.scalar(select(Programme.id).limit(1)) is None


DEMO_ACCOUNTS = (
    ("admin@example.org", "admin", "Demo administrator"),
    ("lead@example.org", "programme_lead", "Demo programme lead"),
    ("evaluator@example.org", "evaluator", "Demo evaluator"),
)
"""The demo's sign-in accounts: email, role, name."""


@dataclass(frozen=True)
class DemoAccounts:
    """The demo accounts just created, and the one password they share."""

    emails: tuple[str, ...]
    password: str

    def summary(self) -> str:
        """Lines for the console: who can sign in, and with which password."""
        who = ", ".join(f"{email} ({role})" for email, role, _ in DEMO_ACCOUNTS)
        return f"demo sign-in accounts: {who}\n  password for all three: {self.password}"


def create_demo_accounts(session: Session) -> DemoAccounts | None:
    """Sign-in accounts for the demo, when the database has none; None when it had some.

    The lead and the evaluator see every programme loaded (after `seed`, just the demo's).
    The password is random, made here: a fixed one would open any server where someone
    once ran the demo. Only the demo (`carepulse serve --demo`) calls this.
    """
    if session.scalar(select(Account.id).limit(1)) is not None:
        return None
    keys = session.scalars(select(Programme.key).order_by(Programme.key)).all()
    password = secrets.token_urlsafe(12)
    for email, role, name in DEMO_ACCOUNTS:
        scope = () if role == "admin" else keys
        create_account(session, email, password, role, name=name, programme_keys=scope)
    return DemoAccounts(tuple(email for email, _, _ in DEMO_ACCOUNTS), password)


@dataclass
class Respondents:
    """Simulated people answering: who answers, and how their answers drift between waves."""

    rng: random.Random
    answer_rate: float = 0.8
    # Each person keeps a disposition across waves, so pre/post pairs are realistic.
    dispositions: dict[int, float] = field(default_factory=dict)

    def answer(
        self, session: Session, invitation: Invitation, at: dt.datetime, drift: float
    ) -> bool:
        """Maybe answer the invitation's every item through the real answer path."""
        if self.rng.random() > self.answer_rate:
            return False
        definition = definition_of(invitation.instrument_version)
        base = self.dispositions.setdefault(invitation.person_id, self.rng.gauss(3.0, 0.7))
        for item in definition.items:
            centre = base + (-drift if item.reverse else drift)
            value = round(centre + self.rng.gauss(0, 0.6))
            value = min(item.scale.max, max(item.scale.min, value))
            record_answer(session, invitation, item.id, value, "web", at)
        complete_response(session, invitation, at)
        return True


def run_cycle(
    session: Session, outbound: Outbound, now: dt.datetime, seed_value: int = 2027
) -> list[tuple[Wave, TickReport, int]]:
    """Seed the demo, then walk every wave from opening to closing with simulated answers.

    Returns, per wave, what the opening tick did and how many people completed.
    """
    respondents = Respondents(random.Random(seed_value))
    rng = respondents.rng
    load_samples(session, now)
    waves = session.scalars(select(Wave).order_by(Wave.opens_at)).all()
    results = []
    for index, wave in enumerate(waves):
        tick = due_work(session, outbound, wave.opens_at)
        drift = 0.5 * index / max(1, len(waves) - 1)
        completed = 0
        invitations = session.scalars(
            select(Invitation).where(Invitation.wave_id == wave.id).order_by(Invitation.id)
        ).all()
        for invitation in invitations:
            at = wave.opens_at + dt.timedelta(hours=rng.randint(1, 72))
            completed += respondents.answer(session, invitation, at, drift)
        due_work(session, outbound, wave.closes_at)
        results.append((wave, tick, completed))
    session.flush()
    return results
