"""What carepulse holds about a person, and how it lets go: erasure, subject access, retention.

Erasure (`erase_person`) removes a person's name, mobile, email and staff number, every
message to or from them, their survey links, and the text of messages that named them.
What happens to their answers is each programme's `erasure` setting:

- `keep_anonymous` (the default, so that evaluations stay valid): their invitations, status
  history and answers are moved to a *tombstone*, a fresh person row holding nothing but the
  home and role the reports group by, and roster dates coarsened to the programme's wave
  days (so every disposition comes out the same, but no joining or leaving day is kept).
  One tombstone per programme, so a matched pre/post pair stays a pair (the reports do not
  change) while nothing joins it to the erased row, to the person's other programmes, or to
  anything that named them. Home and role stay only when they cannot single the person out:
  when fewer than the programme's anonymity threshold of people with that role in that home
  took part (a home has one registered manager), the programme's answers are deleted.
- `delete`: their invitations and answers are deleted, and so are other people's 360
  appraisals *of* them (an opinion about someone is that person's data too).

A STOP must outlive the erasure of the number that sent it, but the number may not stay:
the opt-out keeps only a keyed digest (HMAC-SHA256 under a key derived from SECRET_KEY, so a
copy of the database alone cannot test numbers against it). `opt_out_addresses` is what an
opt-out lookup matches: the address and, when the session carries the key
(`use_suppression_key`), its digest.

Subject access (`subject_access_export`) gathers what is held about a person without ever
saying who rated whom: a rater sees the name of the manager they rated (they were told it),
a manager never sees other people's ratings of them or who gave them.

Retention (`purge_expired`) removes message text and contact details of people whose
programmes all ended more than `retention_days` ago; their answers stay.

Every function flushes and leaves the commit to the caller; erasure, subject access and
purges are recorded in the audit log (`storage.audit.record`) in the same transaction.

Limits, on purpose: the audit log keeps `person:<old id>` and when the erasure happened,
and a tombstone's row id and the closing event of an invitation still open at the time are
as new as the erasure, so someone holding the whole database *and* knowing who was erased
when could still look for rows made at that moment. Answer timestamps are kept (reports
count by them). Free text from other people that names the person by first name only is
not searched for. A roster file that still lists the person adds them again on import.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    delete,
    distinct,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from storage.audit import record
from storage.models import (
    Answer,
    AuditEvent,
    CareHome,
    Cohort,
    CohortHome,
    Instrument,
    InstrumentVersion,
    Invitation,
    InvitationEvent,
    Message,
    OptOut,
    OutboxItem,
    Person,
    Programme,
    Response,
    Wave,
    utcnow,
)
from storage.roster import normalise_mobile

ERASURE_MODES: tuple[str, ...] = ("keep_anonymous", "delete")
"""What a programme's `erasure` setting may say (see the module docstring)."""
DEFAULT_ERASURE_MODE = "keep_anonymous"
DEFAULT_RETENTION_DAYS = 365
"""Days after a programme's last wave closes before contact details and message text go."""
ERASED_NAME = "(erased)"
"""The given name of a tombstone: the one text a tombstone holds."""
SUPPRESSION_KEY_INFO = "carepulse.suppression_key"
"""The `Session.info` key under which `use_suppression_key` puts the digest key."""
_DIGEST_PREFIX = "hmac:"
_OPEN = ("pending", "sent", "delivered", "started")
_UNSENT = ("queued", "sending", "reconcile")
_TOKEN_BYTES = 24  # as surveys.invitations.TOKEN_BYTES: a new, unknown survey link


class PrivacyError(LookupError):
    """A person cannot be found (or found unambiguously), or was erased already."""


# --- settings -----------------------------------------------------------------------------


def erasure_mode(settings: dict[str, Any] | None) -> str:
    """A programme's `erasure` setting, `keep_anonymous` when it has none."""
    value = (settings or {}).get("erasure") or DEFAULT_ERASURE_MODE
    return value if value in ERASURE_MODES else DEFAULT_ERASURE_MODE


def retention_days(settings: dict[str, Any] | None) -> int:
    """A programme's `retention_days` setting, `DEFAULT_RETENTION_DAYS` when it has none."""
    value = (settings or {}).get("retention_days")
    return int(value) if isinstance(value, int) and value > 0 else DEFAULT_RETENTION_DAYS


# --- opt-outs that outlive the number ---------------------------------------------------


def suppression_key(secret_key: str) -> bytes:
    """The key of opt-out digests, derived from the app's SECRET_KEY.

    Changing SECRET_KEY makes existing digests unmatchable: `stale_suppressions` counts them.
    """
    if not secret_key:
        raise ValueError("SECRET_KEY is empty: cannot make opt-out digests")
    return hmac.new(secret_key.encode(), b"carepulse-opt-out-digest", hashlib.sha256).digest()


def _key_id(key: bytes) -> str:
    return hmac.new(key, b"key-id", hashlib.sha256).hexdigest()[:8]


def suppression_digest(key: bytes, channel: str, address: str) -> str:
    """What an opt-out stores instead of `address` once the address itself must go."""
    mac = hmac.new(key, f"{channel}:{address}".encode(), hashlib.sha256).hexdigest()
    return f"{_DIGEST_PREFIX}{_key_id(key)}:{mac}"


def use_suppression_key(factory: sessionmaker[Session], secret_key: str) -> None:
    """Give every session of `factory` the digest key, for `opt_out_addresses`."""
    factory.configure(info={SUPPRESSION_KEY_INFO: suppression_key(secret_key)})


def opt_out_addresses(session: Session, channel: str, address: str) -> list[str]:
    """The `OptOut.address` values that mean `address` has opted out of `channel`."""
    key = session.info.get(SUPPRESSION_KEY_INFO)
    return [address, suppression_digest(key, channel, address)] if key else [address]


def stale_suppressions(session: Session, key: bytes) -> int:
    """Opt-out digests made under another key (SECRET_KEY changed): they match nothing now."""
    stmt = select(func.count(OptOut.id)).where(
        OptOut.address.startswith(_DIGEST_PREFIX),
        ~OptOut.address.startswith(f"{_DIGEST_PREFIX}{_key_id(key)}:"),
    )
    return int(session.scalar(stmt) or 0)


def _addresses(person: Person) -> list[tuple[str, str]]:
    pairs = [("sms", person.mobile), ("email", person.email)]
    return [(channel, address) for channel, address in pairs if address]


def _their_opt_outs(person_id: int, addresses: list[tuple[str, str]]) -> ColumnElement[bool]:
    """Opt-outs recorded for the person, or for one of their addresses."""
    matches: list[ColumnElement[bool]] = [OptOut.person_id == person_id]
    matches += [and_(OptOut.channel == c, OptOut.address == a) for c, a in addresses]
    return or_(*matches)


def _suppress(
    session: Session, person_id: int, addresses: list[tuple[str, str]], key: bytes
) -> int:
    """Replace the person's opt-outs by digests (lifted ones are dropped); how many stay."""
    kept = 0
    for row in session.scalars(select(OptOut).where(_their_opt_outs(person_id, addresses))):
        if row.address.startswith(_DIGEST_PREFIX):
            continue
        digest = suppression_digest(key, row.channel, row.address)
        twin = select(OptOut.id).where(OptOut.channel == row.channel, OptOut.address == digest)
        if row.revoked_at is not None or session.scalar(twin) is not None:
            session.delete(row)  # opted back in, or already kept as a digest
            continue
        row.address, row.person_id, row.keyword = digest, None, None
        kept += 1
    session.flush()
    return kept


# --- finding people -----------------------------------------------------------------------


def is_erased(person: Person) -> bool:
    """Whether `person` is an erasure's tombstone."""
    return person.given_name == ERASED_NAME and not (
        person.external_id or person.mobile or person.email
    )


def find_person(session: Session, reference: str) -> Person:
    """The person `reference` names: `id:42` (the database id), a staff number, a mobile
    in any UK form, or an email. Raises PrivacyError when nobody or several people match."""
    reference = reference.strip()
    if reference.lower().startswith("id:"):
        number = reference[3:].strip()
        person = session.get(Person, int(number)) if number.isdigit() else None
        if person is None or is_erased(person):
            raise PrivacyError(f"no one on the roster has the id {number!r}")
        return person
    matches = [Person.external_id == reference, func.lower(Person.email) == reference.lower()]
    mobile = normalise_mobile(reference)
    if mobile:
        matches.append(Person.mobile == mobile)
    people = session.scalars(select(Person).where(or_(*matches))).all()
    if not people:
        raise PrivacyError(f"no one on the roster is {reference!r} (or give id:NUMBER)")
    if len(people) > 1:
        ids = ", ".join(f"id:{p.id}" for p in people)
        raise PrivacyError(f"{reference!r} matches {len(people)} people ({ids}): give one id")
    return people[0]


def search_people(session: Session, text: str, limit: int = 50) -> list[Person]:
    """People whose name, staff number, mobile or email contain `text` (tombstones never)."""
    text = " ".join(text.split())
    if not text:
        return []
    like = f"%{text.lower()}%"
    full_name = func.lower(Person.given_name + " " + Person.family_name)
    matches = [
        full_name.like(like),
        func.lower(Person.external_id).like(like),
        func.lower(Person.email).like(like),
    ]
    digits = "".join(c for c in text if c.isdigit())
    mobile = normalise_mobile(text)
    if mobile:
        matches.append(Person.mobile == mobile)
    elif len(digits) >= 4:
        matches.append(Person.mobile.like(f"%{digits}%"))
    stmt = (
        select(Person)
        .where(or_(*matches), Person.given_name != ERASED_NAME)
        .order_by(Person.family_name, Person.given_name, Person.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


# --- erasure: the plan ------------------------------------------------------------------


@dataclass
class ProgrammeErasure:
    """What erasing a person does in one programme they took part in (or were rated in)."""

    programme_id: int
    programme_key: str
    setting: str
    """The programme's `erasure` setting."""
    mode: str
    """What is done: `keep_anonymous` or `delete` (`delete` also when keeping would
    single the person out)."""
    reason: str
    invitations: int
    answers: int
    about_them: int
    """Other people's 360 invitations about this person."""


@dataclass
class ErasurePlan:
    """Everything erasing one person will do (or did); no personal data but `label`."""

    person_id: int
    label: str
    """Name, role and home, for the operator's confirmation; never stored."""
    programmes: list[ProgrammeErasure] = field(default_factory=list)
    messages: int = 0
    opt_outs: int = 0

    def lines(self) -> list[str]:
        """What will happen (or happened), one line each, for the CLI and the admin page."""
        out = [f"messages to or from them, deleted: {self.messages}"]
        out.append(f"opt-outs, kept as a keyed digest only: {self.opt_outs}")
        for part in self.programmes:
            what = "kept anonymous" if part.mode == "keep_anonymous" else "deleted"
            line = (
                f"programme {part.programme_key}: {part.invitations} invitation(s) and "
                f"{part.answers} answer(s) {what}"
            )
            if part.about_them:
                line += f"; others' 360 appraisals of them: {part.about_them} {what}"
            out.append(f"{line} ({part.reason})")
        return out

    def detail(self) -> dict[str, Any]:
        """Counts for the audit log: nothing that could lead back to the answers kept."""
        return {
            "messages_deleted": self.messages,
            "opt_outs_kept": self.opt_outs,
            "programmes": {
                p.programme_key: {
                    "mode": p.mode,
                    "invitations": p.invitations,
                    "answers": p.answers,
                    "about_them": p.about_them,
                }
                for p in self.programmes
            },
        }


def _in_programme(stmt: Select[Any], programme_id: int) -> Select[Any]:
    return (
        stmt.join(Wave, Invitation.wave_id == Wave.id)
        .join(Cohort, Wave.cohort_id == Cohort.id)
        .where(Cohort.programme_id == programme_id)
    )


def _own_and_about(
    session: Session, person_id: int, programme_id: int
) -> tuple[list[int], list[int]]:
    """Ids of the person's own invitations and of others' 360 invitations about them."""
    base = _in_programme(select(Invitation.id), programme_id)
    own = session.scalars(base.where(Invitation.person_id == person_id)).all()
    about = session.scalars(
        base.where(Invitation.subject_person_id == person_id, Invitation.person_id != person_id)
    ).all()
    return list(own), list(about)


def _answer_count(session: Session, invitation_ids: Sequence[int]) -> int:
    stmt = (
        select(func.count(Answer.id))
        .join(Response, Answer.response_id == Response.id)
        .where(Response.invitation_id.in_(invitation_ids))
    )
    return int(session.scalar(stmt) or 0)


def _group_size(session: Session, programme_id: int, person: Person) -> int:
    """People with the person's role in the person's home who took part in the programme."""
    stmt = _in_programme(
        select(func.count(distinct(Invitation.person_id))).join(
            Person, Invitation.person_id == Person.id
        ),
        programme_id,
    ).where(Person.care_home_id == person.care_home_id, Person.role == person.role)
    return int(session.scalar(stmt) or 0)


def _programmes_of(session: Session, person_id: int) -> list[Programme]:
    """The programmes where the person was invited or was the subject of a 360."""
    ids = (
        select(Cohort.programme_id)
        .join(Wave, Wave.cohort_id == Cohort.id)
        .join(Invitation, Invitation.wave_id == Wave.id)
        .where(or_(Invitation.person_id == person_id, Invitation.subject_person_id == person_id))
    )
    stmt = select(Programme).where(Programme.id.in_(ids)).order_by(Programme.key)
    return list(session.scalars(stmt))


def _decide(programme: Programme, person: Person, group: int) -> tuple[str, str]:
    setting = erasure_mode(programme.settings)
    if setting == "delete":
        return "delete", "the programme's setting is erasure: delete"
    threshold = programme.anonymity_threshold
    role = person.role.replace("_", " ")
    if group < threshold:
        return "delete", (
            f"only {group} {role}(s) of their home took part, fewer than {threshold}: "
            "their home and role would single them out"
        )
    return "keep_anonymous", f"{group} people share their home and role"


def _own_messages(person_id: int, addresses: list[tuple[str, str]]) -> ColumnElement[bool]:
    mine = select(Invitation.id).where(Invitation.person_id == person_id)
    values = [a for _, a in addresses]
    matches = [Message.person_id == person_id, Message.invitation_id.in_(mine)]
    if values:
        matches += [Message.to_address.in_(values), Message.from_address.in_(values)]
    return or_(*matches)


def plan_erasure(session: Session, person: Person) -> ErasurePlan:
    """What `erase_person` would do to `person`, changing nothing."""
    home = session.get(CareHome, person.care_home_id)
    label = f"{person.full_name} ({person.role.replace('_', ' ')}, {home.name if home else '?'})"
    plan = ErasurePlan(person_id=person.id, label=label)
    for programme in _programmes_of(session, person.id):
        own, about = _own_and_about(session, person.id, programme.id)
        mode, reason = _decide(programme, person, _group_size(session, programme.id, person))
        plan.programmes.append(
            ProgrammeErasure(
                programme_id=programme.id,
                programme_key=programme.key,
                setting=erasure_mode(programme.settings),
                mode=mode,
                reason=reason,
                invitations=len(own),
                answers=_answer_count(session, own),
                about_them=len(about),
            )
        )
    addresses = _addresses(person)
    own_messages = _own_messages(person.id, addresses)
    plan.messages = int(session.scalar(select(func.count(Message.id)).where(own_messages)) or 0)
    live = select(func.count(OptOut.id)).where(
        _their_opt_outs(person.id, addresses), OptOut.revoked_at.is_(None)
    )
    plan.opt_outs = int(session.scalar(live) or 0)
    return plan


# --- erasure: doing it --------------------------------------------------------------------


def erase_person(
    session: Session,
    person: Person,
    *,
    actor: str | None,
    key: bytes,
    now: dt.datetime | None = None,
    remote_addr: str | None = None,
) -> ErasurePlan:
    """Erase `person` as the module docstring says, record `person_erase`; flushes.

    `key` is `suppression_key(SECRET_KEY)`; `actor` as for `storage.audit.record`. Returns
    the plan carried out. `person` must not be used afterwards: its row is gone.
    """
    if is_erased(person):
        raise PrivacyError(f"id:{person.id} has been erased already")
    now = now or utcnow()
    plan = plan_erasure(session, person)
    person_id, addresses = person.id, _addresses(person)
    _suppress(session, person_id, addresses, key)
    _delete_messages(session, _own_messages(person_id, addresses))
    _forget_mentions(session, person)
    for part in plan.programmes:
        own, about = _own_and_about(session, person_id, part.programme_id)
        if part.mode == "delete":
            _delete_invitations(session, own + about)
            continue
        programme = session.get_one(Programme, part.programme_id)
        tombstone = _tombstone(session, person, programme, own + about)
        _detach(session, own, person_id, tombstone.id, now)
        _bulk(
            session,
            update(Invitation)
            .where(Invitation.id.in_(about))
            .values(subject_person_id=tombstone.id),
        )
    _bulk(session, delete(Person).where(Person.id == person_id))
    session.expunge(person)
    session.expire_all()  # bulk statements left loaded objects stale
    record(
        session,
        "person_erase",
        actor=actor,
        target=f"person:{person_id}",
        detail=plan.detail(),
        now=now,
        remote_addr=remote_addr,
    )
    return plan


def _bulk(session: Session, statement: Any) -> Any:
    """Run a bulk UPDATE or DELETE without syncing loaded objects (the caller expires them)."""
    return session.execute(statement, execution_options={"synchronize_session": False})


def _delete_messages(session: Session, which: ColumnElement[bool]) -> None:
    ids = list(session.scalars(select(Message.id).where(which)))
    if not ids:
        return
    # The outbox keeps its rows (they count sends) but no longer points at the message.
    _bulk(
        session,
        update(OutboxItem).where(OutboxItem.message_id.in_(ids)).values(message_id=None),
    )
    _bulk(session, delete(Message).where(Message.id.in_(ids)))


def _forget_mentions(session: Session, person: Person) -> None:
    """Blank the text of other people's messages that named the person: the invitations
    and reminders of their 360 raters (which name whom to rate), and any message holding
    their full name (a first name alone is too common to look for)."""
    about = select(Invitation.id).where(
        Invitation.subject_person_id == person.id, Invitation.person_id != person.id
    )
    _bulk(
        session,
        update(Message).where(Message.invitation_id.in_(about)).values(body=None, subject=None),
    )
    family, full = person.family_name.strip(), person.full_name.casefold()
    if not family:
        return
    # SQL narrows by the family name (lower() is ASCII-only on SQLite, hence both cases);
    # Python decides on the whole name, in any case and script.
    near = [
        column.contains(value, autoescape=True)
        for column in (Message.body, Message.subject)
        for value in {family, family.lower()}
    ]
    near += [func.lower(Message.body).contains(family.lower(), autoescape=True)]
    rows = session.execute(select(Message.id, Message.body, Message.subject).where(or_(*near)))
    named = [i for i, body, subject in rows if full in f"{body or ''}\n{subject or ''}".casefold()]
    if named:
        _bulk(session, update(Message).where(Message.id.in_(named)).values(body=None, subject=None))


def _delete_invitations(session: Session, ids: Sequence[int]) -> None:
    """Delete invitations with their outbox rows, status history, response and answers;
    their messages stay in the sender's log, without text or link to the invitation."""
    if not ids:
        return
    responses = select(Response.id).where(Response.invitation_id.in_(ids))
    _bulk(session, delete(OutboxItem).where(OutboxItem.invitation_id.in_(ids)))
    _bulk(
        session,
        update(Message)
        .where(Message.invitation_id.in_(ids))
        .values(invitation_id=None, body=None, subject=None),
    )
    _bulk(session, delete(Answer).where(Answer.response_id.in_(responses)))
    _bulk(session, delete(Response).where(Response.invitation_id.in_(ids)))
    _bulk(session, delete(InvitationEvent).where(InvitationEvent.invitation_id.in_(ids)))
    _bulk(session, delete(Invitation).where(Invitation.id.in_(ids)))


def _first_on_or_after(days: list[dt.date], day: dt.date) -> dt.date | None:
    return next((d for d in days if d >= day), None)


def _tombstone(
    session: Session, person: Person, programme: Programme, invitation_ids: Sequence[int]
) -> Person:
    """A person row with nothing of `person` but role and home, to hold the kept answers.

    Reports compare roster dates with the local days waves open and close; moving each
    date to the first such day on or after it changes no comparison (so no disposition)
    and keeps no day of the person's own. The row is inactive after the last of those
    days, so no later wave invites it, and is dated by the first wave it took part in
    rather than by the erasure, which the audit log dates.
    """
    tz = ZoneInfo(programme.timezone)
    waves = session.execute(
        select(Wave.opens_at, Wave.closes_at).where(
            Wave.id.in_(select(Invitation.wave_id).where(Invitation.id.in_(invitation_ids)))
        )
    ).all()
    days = sorted({instant.astimezone(tz).date() for pair in waves for instant in pair})
    after = days[-1] + dt.timedelta(days=1)
    active_to = _first_on_or_after(days, person.active_to) if person.active_to else None
    first_open = min(opens for opens, _ in waves)
    tombstone = Person(
        given_name=ERASED_NAME,
        family_name="",
        role=person.role,
        care_home_id=person.care_home_id,
        language="en",
        active_from=_first_on_or_after(days, person.active_from) or after,
        active_to=active_to or after,
        created_at=first_open,
        updated_at=first_open,
    )
    session.add(tombstone)
    session.flush()
    return tombstone


def _detach(
    session: Session, ids: Sequence[int], person_id: int, tombstone_id: int, now: dt.datetime
) -> None:
    """Move the person's own invitations to the tombstone, with new (unknown) survey links,
    no free-text status details, and nothing left to send."""
    if not ids:
        return
    mine = Invitation.id.in_(ids)
    _bulk(session, update(Invitation).where(mine).values(person_id=tombstone_id))
    _bulk(
        session,
        update(Invitation)
        .where(mine, Invitation.subject_person_id == person_id)
        .values(subject_person_id=tombstone_id),
    )
    for invitation_id in ids:
        new_link = secrets.token_urlsafe(_TOKEN_BYTES)
        _bulk(
            session, update(Invitation).where(Invitation.id == invitation_id).values(token=new_link)
        )
    # A detail can hold a provider's error text, which quotes the number.
    _bulk(
        session,
        update(InvitationEvent).where(InvitationEvent.invitation_id.in_(ids)).values(detail=None),
    )
    still_open = list(
        session.scalars(select(Invitation.id).where(mine, Invitation.status.in_(_OPEN)))
    )
    if still_open:
        # Asking to be erased is a refusal: open invitations close as opted out.
        _bulk(
            session,
            update(Invitation)
            .where(Invitation.id.in_(still_open))
            .values(status="opted_out", status_changed_at=now),
        )
        session.add_all(
            InvitationEvent(invitation_id=i, status="opted_out", at=now) for i in still_open
        )
    outbox = OutboxItem.invitation_id.in_(ids)
    _bulk(
        session,
        update(OutboxItem)
        .where(outbox, OutboxItem.status.in_(_UNSENT))
        .values(status="cancelled", updated_at=now),
    )
    _bulk(session, update(OutboxItem).where(outbox).values(last_error=None))
    session.flush()


# --- subject access -----------------------------------------------------------------------

WITHHELD_NOTES = (
    "Survey links are not included: each is a key that opens a survey.",
    "Other people's 360 appraisals of you, and who gave them, are not included: they "
    "answered in confidence. Your own 360 report shows what can be shared with you.",
    "Who at the programme looked at or changed your details is given by date and kind only.",
)


def subject_access_export(
    session: Session,
    person: Person,
    *,
    actor: str | None,
    now: dt.datetime | None = None,
    remote_addr: str | None = None,
) -> dict[str, Any]:
    """Everything held about `person`, as JSON-ready data; records `subject_access_export`.

    Their roster entry, each invitation (survey, wave, status history) with their own
    answers, every message to or from them, their opt-outs, and audit events about them.
    Never who rated whom: for a rater's 360 the manager is named (the invitation named
    them); others' appraisals of the person are left out entirely.
    """
    if is_erased(person):
        raise PrivacyError(f"id:{person.id} has been erased: nothing is held about them")
    now = now or utcnow()
    invitations = _sar_invitations(session, person)
    export = {
        "generated_at": now.isoformat(),
        "person": _sar_person(session, person),
        "invitations": invitations,
        "messages": _sar_messages(session, person),
        "opt_outs": _sar_opt_outs(session, person),
        "audit": _sar_audit(session, person),
        "not_included": list(WITHHELD_NOTES),
    }
    record(
        session,
        "subject_access_export",
        actor=actor,
        target=f"person:{person.id}",
        detail={
            "invitations": len(invitations),
            "answers": sum(len((i["response"] or {}).get("answers", [])) for i in invitations),
            "messages": len(export["messages"]),
        },
        now=now,
        remote_addr=remote_addr,
    )
    return export


def _iso(value: dt.date | dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _sar_person(session: Session, person: Person) -> dict[str, Any]:
    home = session.get(CareHome, person.care_home_id)
    return {
        "id": person.id,
        "external_id": person.external_id,
        "given_name": person.given_name,
        "family_name": person.family_name,
        "role": person.role,
        "care_home": {
            "name": home.name,
            "cqc_location_id": home.cqc_location_id,
            "local_authority": home.local_authority,
        }
        if home
        else None,
        "mobile": person.mobile,
        "email": person.email,
        "language": person.language,
        "active_from": _iso(person.active_from),
        "active_to": _iso(person.active_to),
        "created_at": _iso(person.created_at),
        "updated_at": _iso(person.updated_at),
    }


def _question(definition: dict[str, Any], item_id: str, relation: str | None) -> str | None:
    """The wording the person saw for `item_id` (self or others phrasing for a 360)."""
    item = next((i for i in definition.get("items", []) if i.get("id") == item_id), None)
    text = item.get("text") if item else None
    if isinstance(text, dict):
        wanted = "self" if relation in (None, "self") else "others"
        return text.get(wanted) or text.get("default") or next(iter(text.values()), None)
    return text


def _sar_invitations(session: Session, person: Person) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Invitation, Wave, Cohort, Programme, Instrument, InstrumentVersion)
        .join(Wave, Invitation.wave_id == Wave.id)
        .join(Cohort, Wave.cohort_id == Cohort.id)
        .join(Programme, Cohort.programme_id == Programme.id)
        .join(InstrumentVersion, Invitation.instrument_version_id == InstrumentVersion.id)
        .join(Instrument, InstrumentVersion.instrument_id == Instrument.id)
        .where(Invitation.person_id == person.id)
        .order_by(Wave.opens_at, Invitation.id)
    ).all()
    return [_sar_invitation(session, *row) for row in rows]


def _sar_invitation(
    session: Session,
    invitation: Invitation,
    wave: Wave,
    cohort: Cohort,
    programme: Programme,
    instrument: Instrument,
    version: InstrumentVersion,
) -> dict[str, Any]:
    relation = invitation.rater_relation
    about = None
    if relation not in (None, "self") and invitation.subject_person_id is not None:
        subject = session.get(Person, invitation.subject_person_id)
        # The manager they were asked to rate, as their invitation named them; nothing else.
        about = subject.full_name if subject and not is_erased(subject) else None
    events = session.scalars(
        select(InvitationEvent)
        .where(InvitationEvent.invitation_id == invitation.id)
        .order_by(InvitationEvent.id)
    )
    return {
        "programme": {"key": programme.key, "name": programme.name},
        "cohort": cohort.key,
        "wave": {
            "key": wave.key,
            "name": wave.name,
            "kind": wave.kind,
            "opens_at": _iso(wave.opens_at),
            "closes_at": _iso(wave.closes_at),
        },
        "survey": {"key": instrument.key, "title": instrument.title, "version": version.version},
        "relation": relation,
        "about": about,
        "channel": invitation.channel,
        "status": invitation.status,
        "history": [{"status": e.status, "at": _iso(e.at), "detail": e.detail} for e in events],
        "response": _sar_response(session, invitation, version.definition, relation),
    }


def _sar_response(
    session: Session, invitation: Invitation, definition: dict[str, Any], relation: str | None
) -> dict[str, Any] | None:
    response = session.scalar(select(Response).where(Response.invitation_id == invitation.id))
    if response is None:
        return None
    answers = session.scalars(
        select(Answer).where(Answer.response_id == response.id).order_by(Answer.id)
    )
    return {
        "channel": response.channel,
        "started_at": _iso(response.started_at),
        "completed_at": _iso(response.completed_at),
        "answers": [
            {
                "item": a.item_id,
                "question": _question(definition, a.item_id, relation),
                "value": a.value,
                "channel": a.channel,
                "answered_at": _iso(a.answered_at),
            }
            for a in answers
        ],
    }


def _sar_messages(session: Session, person: Person) -> list[dict[str, Any]]:
    # Messages about others' invitations are theirs, even when an address matches.
    others = select(Invitation.id).where(Invitation.person_id != person.id)
    stmt = (
        select(Message)
        .where(
            _own_messages(person.id, _addresses(person)),
            or_(Message.invitation_id.is_(None), Message.invitation_id.not_in(others)),
        )
        .order_by(Message.created_at, Message.id)
    )
    return [
        {
            "direction": m.direction,
            "channel": m.channel,
            "to": m.to_address,
            "from": m.from_address,
            "subject": m.subject,
            "body": m.body,
            "status": m.status,
            "error": m.error_message,
            "at": _iso(m.created_at),
        }
        for m in session.scalars(stmt)
    ]


def _sar_opt_outs(session: Session, person: Person) -> list[dict[str, Any]]:
    mine = _their_opt_outs(person.id, _addresses(person))
    rows = session.scalars(select(OptOut).where(mine).order_by(OptOut.id))
    return [
        {
            "channel": o.channel,
            "address": o.address,
            "keyword": o.keyword,
            "at": _iso(o.created_at),
            "lifted_at": _iso(o.revoked_at),
        }
        for o in rows
    ]


def _sar_audit(session: Session, person: Person) -> list[dict[str, Any]]:
    rows = session.execute(
        select(AuditEvent.action, AuditEvent.at)
        .where(AuditEvent.target == f"person:{person.id}")
        .order_by(AuditEvent.at, AuditEvent.id)
    )
    return [{"action": action, "at": _iso(at)} for action, at in rows]


# --- retention ----------------------------------------------------------------------------


@dataclass
class PurgeReport:
    """What a retention purge did (or, with `dry_run`, would do)."""

    dry_run: bool
    people: int = 0
    """People whose mobile and email were removed."""
    messages: int = 0
    """Messages whose text and addresses were removed."""
    opt_outs: int = 0
    """Opt-outs now kept as a keyed digest only."""
    stale_suppressions: int = 0
    """Opt-out digests made under an earlier SECRET_KEY (they no longer match)."""

    @property
    def changed(self) -> bool:
        """Whether anything was (or would be) removed."""
        return bool(self.people or self.messages or self.opt_outs)

    def summary(self) -> str:
        """One line for the CLI and the clock's log."""
        verb = "would remove" if self.dry_run else "removed"
        people = "1 person" if self.people == 1 else f"{self.people} people"
        line = (
            f"retention purge {verb} the mobile and email of {people} and the text of "
            f"{self.messages} message(s); {self.opt_outs} opt-out(s) kept as digests only"
        )
        if self.stale_suppressions:
            line += (
                f"; WARNING: {self.stale_suppressions} opt-out(s) of erased numbers were made "
                "under an earlier SECRET_KEY and no longer match: restore that key"
            )
        return line


def programme_ends(session: Session) -> dict[int, dt.datetime]:
    """Each programme's end: when its last wave closes (programmes without waves: none)."""
    rows = session.execute(
        select(Cohort.programme_id, func.max(Wave.closes_at))
        .join(Wave, Wave.cohort_id == Cohort.id)
        .group_by(Cohort.programme_id)
    )
    return {programme_id: end for programme_id, end in rows if end is not None}


def expired_people(session: Session, now: dt.datetime) -> list[int]:
    """Ids of people whose programmes all ended more than their `retention_days` ago.

    A person's programmes are those of their home's cohorts and of their invitations
    (as respondent or 360 subject). Someone in no programme is never expired: there is
    no end to count from (a roster imported ahead of its programme file, say).
    """
    settings = dict(session.execute(select(Programme.id, Programme.settings)).all())
    ended = {
        programme_id
        for programme_id, end in programme_ends(session).items()
        if end + dt.timedelta(days=retention_days(settings.get(programme_id))) <= now
    }
    by_invitation = (
        select(Invitation.person_id, Invitation.subject_person_id, Cohort.programme_id)
        .join(Wave, Invitation.wave_id == Wave.id)
        .join(Cohort, Wave.cohort_id == Cohort.id)
    )
    memberships: dict[int, set[int]] = {}
    for person_id, subject_id, programme_id in session.execute(by_invitation):
        for who in (person_id, subject_id):
            if who is not None:
                memberships.setdefault(who, set()).add(programme_id)
    by_home = (
        select(Person.id, Cohort.programme_id)
        .join(CohortHome, CohortHome.care_home_id == Person.care_home_id)
        .join(Cohort, Cohort.id == CohortHome.cohort_id)
    )
    for person_id, programme_id in session.execute(by_home):
        memberships.setdefault(person_id, set()).add(programme_id)
    return sorted(pid for pid, programmes in memberships.items() if programmes <= ended)


def purge_expired(
    session: Session,
    *,
    key: bytes,
    actor: str | None,
    now: dt.datetime | None = None,
    dry_run: bool = False,
) -> PurgeReport:
    """Remove the mobile, email and message text of every expired person (`expired_people`);
    answers, invitations and names stay. Records `retention_purge` when anything went.

    With `dry_run` the same work is done inside a savepoint and rolled back, so the counts
    are exactly what a real run would remove.
    """
    now = now or utcnow()
    report = PurgeReport(dry_run=dry_run)
    savepoint = session.begin_nested()
    for person_id in expired_people(session, now):
        person = session.get(Person, person_id)
        if person is not None:
            _purge_person(session, person, key, report)
    report.stale_suppressions = stale_suppressions(session, key)
    if dry_run:
        savepoint.rollback()
        return report
    savepoint.commit()
    if report.changed:
        record(
            session,
            "retention_purge",
            actor=actor,
            detail={
                "people": report.people,
                "messages": report.messages,
                "opt_outs": report.opt_outs,
            },
            now=now,
        )
    return report


def _purge_person(session: Session, person: Person, key: bytes, report: PurgeReport) -> None:
    addresses = _addresses(person)
    values = [address for _, address in addresses]
    report.opt_outs += _suppress(session, person.id, addresses, key)
    blank = [
        Message.body.is_not(None),
        Message.subject.is_not(None),
        Message.error_message.is_not(None),
        Message.provider_id.is_not(None),
    ]
    if values:
        blank += [Message.to_address.in_(values), Message.from_address.in_(values)]
    result = _bulk(
        session,
        update(Message)
        .where(_own_messages(person.id, addresses), or_(*blank))
        .values(
            body=None,
            subject=None,
            error_message=None,
            # A provider's message id finds the number again in the provider's own logs.
            provider_id=None,
            to_address=_blanked(Message.to_address, values),
            from_address=_blanked(Message.from_address, values),
        ),
    )
    report.messages += result.rowcount or 0
    mine = select(Invitation.id).where(Invitation.person_id == person.id)
    _bulk(
        session,
        update(InvitationEvent)
        .where(InvitationEvent.invitation_id.in_(mine), InvitationEvent.detail.is_not(None))
        .values(detail=None),
    )
    _bulk(
        session,
        update(OutboxItem)
        .where(OutboxItem.invitation_id.in_(mine), OutboxItem.last_error.is_not(None))
        .values(last_error=None),
    )
    if values:
        person.mobile = person.email = None
        report.people += 1
    session.flush()


def _blanked(column: Any, values: list[str]) -> Any:
    """`column`, or "" where it holds one of `values` (the addresses being removed)."""
    if not values:
        return column
    return case((column.in_(values), ""), else_=column)
