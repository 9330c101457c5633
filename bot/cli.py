"""The `carepulse` console command.

Every subcommand runs inside the app (so it reads the same configuration as the web
service) and prints what it did. Problems exit with status 1 and say what to fix.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext

from bot import create_app
from bot.account_commands import user_group
from bot.audit_view import audit_command, record_after_reading, report_detail
from bot.clock import due_work
from bot.config import ConfigError
from bot.db import get_engine, get_session
from bot.outbound import Outbound
from bot.privacy_commands import erase_command, purge_command, subject_access_command
from bot.transports import TransportUnavailable, make_transports
from storage import db as storage_db
from storage.audit import console_actor, file_digest, record
from storage.models import utcnow
from storage.roster import RosterError, import_roster
from surveys.programme import ProgrammeError, load_programme


def _outbound() -> Outbound:
    settings = current_app.config["CAREPULSE"]
    try:
        sms, email = make_transports(settings)
    except TransportUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    return Outbound(settings, sms, email)


def _require_migrated() -> None:
    if not storage_db.is_migrated(get_engine()):
        raise click.ClickException("the database is not migrated: run `carepulse db upgrade`")


@click.command("import-roster")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--skip-invalid", is_flag=True, help="Import the good rows and list the bad ones.")
@with_appcontext
def import_roster_command(file: Path, skip_invalid: bool) -> None:
    """Import care homes and people from a CSV or XLSX roster FILE.

    By default a file with any bad row imports nothing and lists every problem.
    """
    _require_migrated()
    session = get_session()
    try:
        report = import_roster(session, file, skip_invalid=skip_invalid)
    except RosterError as exc:
        raise click.ClickException(str(exc)) from None
    if report.imported:
        record(
            session,
            "roster_import",
            actor=console_actor(),
            detail=_roster_detail(report, file),
        )
        session.commit()
    else:
        session.rollback()
    click.echo(report.summary())
    if not report.imported:
        sys.exit(1)


def _roster_detail(report, file: Path) -> dict[str, object]:
    # Counts and a fingerprint of the file, never its name or rows: either may name people.
    counts = ("rows_read", "created", "updated", "unchanged", "left", "reactivated", "skipped")
    return {
        "file_sha256": file_digest(file),
        "format": report.file_format,
        **{name: getattr(report, name) for name in counts},
        "homes_created": report.homes_created,
        "homes_updated": report.homes_updated,
    }


@click.command("load-programme")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@with_appcontext
def load_programme_command(file: Path) -> None:
    """Create or update a programme (cohorts, homes, waves, instruments) from a YAML FILE."""
    _require_migrated()
    session = get_session()
    try:
        report = load_programme(session, file)
    except ProgrammeError as exc:
        session.rollback()
        raise click.ClickException(str(exc)) from None
    record(
        session,
        "programme_load",
        actor=console_actor(),
        target=f"programme:{report.programme_key}",
        detail={
            "file_sha256": file_digest(file),
            "created": len(report.created),
            "updated": len(report.updated),
        },
    )
    session.commit()
    click.echo(report.summary())


@click.command("add-rater")
@click.option("--programme", "programme_key", help="Programme key (default: the only one).")
@click.option("--cohort", "cohort_key", help="Cohort key (default: the subject's cohort).")
@click.option("--wave", "wave_key", required=True, help="Wave key, e.g. baseline.")
@click.option("--subject", required=True, help="External id, mobile or email of the manager.")
@click.option("--rater", required=True, help="External id, mobile or email of the rater.")
@click.option("--relation", required=True, type=click.Choice(["line_manager", "peer"]))
@with_appcontext
def add_rater_command(
    programme_key: str | None,
    cohort_key: str | None,
    wave_key: str,
    subject: str,
    rater: str,
    relation: str,
) -> None:
    """Invite a named rater (a proprietor as line manager, or a peer) to a manager's 360."""
    from bot.summary import resolve_programme
    from surveys.invitations import RaterError, add_named_rater, find_person, find_wave

    _require_migrated()
    session = get_session()
    key = resolve_programme(session, programme_key)
    try:
        subject_person, rater_person = find_person(session, subject), find_person(session, rater)
        wave = find_wave(session, key, wave_key, subject_person, cohort_key)
        invitation = add_named_rater(session, wave, subject_person, rater_person, relation)
    except (RaterError, LookupError) as exc:
        session.rollback()
        raise click.ClickException(str(exc)) from None
    session.commit()
    click.echo(
        f"{rater_person.full_name} is invited as {relation} for {subject_person.full_name}"
        f" in {wave.key} (by {invitation.channel}, {invitation.status})"
    )


@click.command("send-due")
@with_appcontext
def send_due_command() -> None:
    """Open waves whose time has come, send their invitations, expire closed waves (once)."""
    _require_migrated()
    session = get_session()
    report = due_work(session, _outbound())
    session.commit()
    click.echo(report.summary())


@click.command("clock")
@with_appcontext
def clock_command() -> None:
    """Run the scheduler process (the Procfile's `clock`).

    Every minute it plans what is due into the outbox: opens waves whose time has come,
    queues their invitations and due reminders (never to go out outside the programme's
    sending window) and expires closed waves. On Mondays at 08:00 in each programme's time
    zone it emails the programme leads their weekly figures. Sending is the dispatcher's
    job (`carepulse dispatch`). SIGTERM stops it after the job in hand.
    """
    import logging
    import threading

    from apscheduler.events import EVENT_SCHEDULER_STARTED
    from sqlalchemy import select

    from bot.clock import make_scheduler
    from bot.db import get_sessionmaker
    from storage.models import Programme

    _require_migrated()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # not every minute's run
    settings = current_app.config["CAREPULSE"]
    session = get_session()
    zones = {settings.timezone, *session.scalars(select(Programme.timezone).distinct())}
    session.rollback()
    # The scheduler runs in this one process of its own (the Procfile's `clock`), never in
    # the web workers: APScheduler 3 keeps its jobs per process and cannot share a job store
    # between processes, so every gunicorn worker would run every job again. Should two
    # clocks run by mistake, nothing goes out twice: the outbox's unique key makes the
    # second enqueue a no-op, and the weekly email skips leads who already had this week's.
    # Each job opens a session of its own from the app's session factory.
    scheduler = make_scheduler(get_sessionmaker(), settings, _outbound().email, zones)

    def stop(*_: object) -> None:
        # From a thread of its own, not inside the signal handler: the handler may have
        # interrupted the scheduler while it held a lock that shutting down needs. The job
        # in hand finishes (`wait=True`), no new one starts, and `start()` returns.
        if scheduler.running:
            threading.Thread(target=scheduler.shutdown, name="clock-stop").start()

    def started(_event: object) -> None:
        # Until the scheduler runs, SIGTERM's default (exit at once) is right: no job yet.
        signal.signal(signal.SIGTERM, stop)
        click.echo(
            "carepulse clock: running (tick every minute; weekly email Mondays 08:00 in "
            f"{', '.join(sorted(zones))})"
        )

    scheduler.add_listener(started, EVENT_SCHEDULER_STARTED)
    try:
        scheduler.start()
    except KeyboardInterrupt:
        if scheduler.running:
            scheduler.shutdown()
    click.echo("carepulse clock: stopped")


@click.command("weekly-mail")
@click.option("--programme", "programme_key", help="Programme key (default: the only one).")
@with_appcontext
def weekly_mail_command(programme_key: str | None) -> None:
    """Email the programme leads their weekly figures now.

    The clock sends the same email every Monday at 08:00 in the programme's time zone: the
    last 7 days' response rates by wave and care home, and how many people are still to
    answer (counts only, small groups suppressed). Leads are the programme file's `leads`.
    """
    from bot.summary import resolve_programme
    from bot.weekly_mail import send_weekly_mail

    _require_migrated()
    session = get_session()
    key = resolve_programme(session, programme_key)
    report = send_weekly_mail(session, current_app.config["CAREPULSE"], _outbound().email, key)
    session.commit()
    if not report.messages:
        raise click.ClickException(report.summary())
    click.echo(report.summary())
    if any(m.status in ("failed", "error") for m in report.messages):
        sys.exit(1)


@click.command("report")
@click.option("--programme", "programme_key", help="Programme key (default: the only one).")
@click.option("--pre", help="Wave key before (default: the first baseline wave).")
@click.option("--post", help="Wave key after (default: the last end wave).")
@click.option("--cohort", help="Only this cohort (refused if it or the rest is too small).")
@click.option("--home", help="Only this care home, by name (same rule).")
@click.option("--role", help="Only this roster role (same rule).")
@click.option("--channel", type=click.Choice(["sms", "email"]), help="Only this channel.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write every table as CSV, one XLSX workbook and PNG charts into this folder.",
)
@click.option(
    "--wide",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Programme leads: also write the pseudonymised analysis file (CSV) here.",
)
@with_appcontext
def report_command(
    programme_key: str | None,
    pre: str | None,
    post: str | None,
    cohort: str | None,
    home: str | None,
    role: str | None,
    channel: str | None,
    out: Path | None,
    wide: Path | None,
) -> None:
    """Print the evaluator report; --out also writes CSV, XLSX and PNG charts.

    The same tables as the dashboard and the JSON API (one reporting layer). Figures from
    fewer people than the programme's anonymity threshold are suppressed everywhere.
    """
    from bot.summary import pseudonym_key, report_text, resolve_programme, write_report_files
    from reports.disclosure import DisclosureError
    from reports.export import wide_answers, write_csv
    from reports.frames import answers_frame, items_frame
    from reports.service import ReportError, ReportRequest, build_report

    _require_migrated()
    session = get_session()
    key = resolve_programme(session, programme_key)
    filters = {"cohort": cohort, "home": home, "role": role, "channel": channel}
    wanted = ReportRequest(key, pre, post, {k: v for k, v in filters.items() if v})
    try:
        report = build_report(session, wanted)
    except (ReportError, DisclosureError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report_text(report))
    if out:
        written = write_report_files(report, out)
        detail = report_detail(report.pre, report.post, report.filters, format="files")
        record_after_reading(
            session,
            "report_export",
            actor=console_actor(),
            target=f"programme:{key}",
            detail={**detail, "files": len(written)},
        )
        click.echo(f"\nwrote {len(written)} files to {out}: {', '.join(written)}")
    if wide:
        secret = current_app.config["SECRET_KEY"]
        frame = wide_answers(
            answers_frame(session, key), items_frame(session, key), pseudonym_key(secret)
        )
        wide.parent.mkdir(parents=True, exist_ok=True)
        write_csv(frame, wide)
        record_after_reading(
            session,
            "wide_export",
            actor=console_actor(),
            target=f"programme:{key}",
            detail={"rows": len(frame)},
        )
        click.echo(f"wrote the pseudonymised analysis file ({len(frame)} rows) to {wide}")


@click.command("routes")
@with_appcontext
def routes_command() -> None:
    """Print every route and who may use it, as the README's Markdown table."""
    from bot.access import route_table

    click.echo(route_table(current_app._get_current_object()))  # type: ignore[attr-defined]


@click.command("manager-links")
@click.option("--programme", "programme_key", help="Programme key (default: the only one).")
@with_appcontext
def manager_links_command(programme_key: str | None) -> None:
    """Print each rated manager's personal link to their confidential 360 report.

    For the programme lead to send to each manager; a link opens that one report only and
    stops working after 120 days.
    """
    from sqlalchemy import select

    from bot.manager_reports import LINK_DAYS, report_link
    from bot.summary import resolve_programme
    from reports.frames import subjects_rated
    from storage.models import Person

    _require_migrated()
    session = get_session()
    key = resolve_programme(session, programme_key)
    ids = subjects_rated(session, key)
    if not ids:
        raise click.ClickException(f"nobody has been rated in a 360 in {key!r} yet")
    with current_app.test_request_context():
        for person in session.scalars(select(Person).where(Person.id.in_(ids))):
            contact = person.email or "no email on the roster"
            click.echo(f"{person.full_name} <{contact}>\n  {report_link(key, person.id)}")
    # Who was handed links that open confidential reports, and how many (never the links).
    record_after_reading(
        session,
        "manager_links",
        actor=console_actor(),
        target=f"programme:{key}",
        detail={"links": len(ids)},
    )
    click.echo(f"(links stop working after {LINK_DAYS} days)")


@click.command("demo")
@click.option(
    "--keep",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the demo's SQLite database at this path.",
)
def demo_command(keep: Path | None) -> None:
    """Run a whole baseline -> end cycle on a scratch database and print the results.

    Uses the sample roster and programme under examples/, the development phone and
    mailbox, and simulated respondents answering through the real answer path.
    """
    from bot.demo import run_cycle
    from bot.summary import report_text, resolve_programme
    from reports.service import ReportRequest, build_report

    with tempfile.TemporaryDirectory() as folder:
        path = keep or Path(folder) / "demo.sqlite3"
        if path.exists():
            raise click.ClickException(f"{path} exists; choose a new path for --keep")
        app = create_app(
            {
                "DATABASE_URL": f"sqlite:///{path.resolve()}",
                "TWILIO_ACCOUNT_SID": "",
                "TWILIO_AUTH_TOKEN": "",
                "TWILIO_FROM_NUMBER": "",
                "TWILIO_MESSAGING_SERVICE_SID": "",
                "SMTP_HOST": "",
            }
        )
        with app.app_context():
            storage_db.upgrade(get_engine())
            session = get_session()
            results = run_cycle(session, _outbound(), utcnow())
            session.commit()
            for wave, tick, completed in results:
                click.echo(
                    f"{wave.name} ({wave.opens_at:%d %b %Y} to {wave.closes_at:%d %b %Y}): "
                    f"{tick.invited} invited, {tick.sent} sent, {completed} completed"
                )
            key = resolve_programme(session, None)
            report = build_report(session, ReportRequest(key, "baseline", "end"))
            click.echo("")
            click.echo(report_text(report))
        if keep:
            click.echo(f"\ndemo database kept at {keep}")


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int, envvar="PORT")
@click.option("--demo", is_flag=True, help="Load the demo programme if the database is empty.")
@with_appcontext
def serve_command(host: str, port: int, demo: bool) -> None:
    """Apply migrations, optionally load the demo, and serve the web app."""
    from werkzeug.serving import run_simple

    from bot.demo import create_demo_accounts, is_empty, seed

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    storage_db.upgrade(get_engine())
    session = get_session()
    accounts = None
    if demo and is_empty(session):
        tick = seed(session, _outbound())
        accounts = create_demo_accounts(session)
        session.commit()
        click.echo(f"loaded the demo programme: {tick.summary()}")
    settings = app.config["CAREPULSE"]
    url = f"http://{host}:{port}/"
    click.echo(f"carepulse is running at {url}")
    click.echo(f"  evaluator reports:   {url}dashboard/ (sign in at {url}login)")
    if accounts:
        click.echo(accounts.summary())
    click.echo(
        f"  development phone:   {url}dev/phone"
        if settings.sms_transport == "dev-phone"
        else f"  SMS through {settings.sms_transport}"
    )
    click.echo(
        f"  development mailbox: {url}dev/mailbox"
        if settings.email_transport == "dev-mailbox"
        else f"  email through {settings.email_transport}"
    )
    sys.stdout.flush()
    run_simple(host, port, app, threaded=True, use_reloader=False)


@click.command("dispatch")
@click.option("--once", is_flag=True, help="Reconcile, send everything due now, and exit.")
@click.option(
    "--threads",
    type=click.IntRange(1, 32),
    help="Sending threads (default: 4 on PostgreSQL, 1 on SQLite).",
)
@click.option("--worker-id", help="This dispatcher's name in the outbox (default: host-pid-rnd).")
@with_appcontext
def dispatch_command(once: bool, threads: int | None, worker_id: str | None) -> None:
    """Send queued messages from the outbox (the Procfile's `dispatch`) until stopped.

    Several dispatchers may run at once on PostgreSQL; on SQLite run one, with one thread.
    SIGTERM or Ctrl-C finishes the message in hand and stops.
    """
    from bot.dispatch import DispatcherOptions, default_worker_id, run_dispatcher

    _require_migrated()
    if threads and threads > 1 and get_engine().dialect.name == "sqlite":
        raise click.ClickException("SQLite serialises every write: use --threads 1")
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    worker_id = worker_id or default_worker_id()
    settings = app.config["CAREPULSE"]
    pacing = f"{settings.send_rate:g}/s per sender" if settings.send_rate > 0 else "off"
    click.echo(f"carepulse dispatch: worker {worker_id}, pacing {pacing}")
    options = DispatcherOptions(threads=threads, once=once)
    try:
        report = run_dispatcher(app, worker_id, options=options)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"carepulse dispatch: stopped; {report.summary()}")


@click.group("outbox")
def outbox_group() -> None:
    """Messages in doubt after a dispatcher stopped mid-send."""


@outbox_group.command("review")
@with_appcontext
def outbox_review_command() -> None:
    """List the messages a person must decide on (status `reconcile`)."""
    from bot.dispatch import in_doubt

    _require_migrated()
    rows = in_doubt(get_session())
    if not rows:
        click.echo("no messages to review")
        return
    click.echo(f"{len(rows)} message(s) in doubt; decide each with `carepulse outbox resolve`:")
    for line in rows:
        click.echo(line)


@outbox_group.command("resolve")
@click.argument("row_id", metavar="ID", type=int)
@click.option("--sent", "decision", flag_value="sent", help="It did go out: mark it sent.")
@click.option("--resend", "decision", flag_value="resend", help="It did not: send it again.")
@click.option("--cancel", "decision", flag_value="cancel", help="Do not send it.")
@with_appcontext
def outbox_resolve_command(row_id: int, decision: str | None) -> None:
    """Decide on message ID from `carepulse outbox review`."""
    from bot.dispatch import ResolveError, resolve

    _require_migrated()
    if decision is None:
        raise click.ClickException("say what happened: --sent, --resend or --cancel")
    session = get_session()
    try:
        text = resolve(session, row_id, decision, utcnow())
    except ResolveError as exc:
        session.rollback()
        raise click.ClickException(str(exc)) from None
    session.commit()
    click.echo(text)


def _create_app_or_exit():
    try:
        return create_app()
    except ConfigError as exc:
        click.echo(f"carepulse: configuration error: {exc}", err=True)
        sys.exit(2)


cli = FlaskGroup(
    name="carepulse",
    create_app=_create_app_or_exit,
    add_default_commands=False,
    add_version_option=False,
    load_dotenv=False,
    help="carepulse: survey collection for care-home improvement programmes.",
)
for command in (
    import_roster_command,
    load_programme_command,
    add_rater_command,
    send_due_command,
    clock_command,
    weekly_mail_command,
    dispatch_command,
    outbox_group,
    report_command,
    manager_links_command,
    routes_command,
    demo_command,
    serve_command,
    user_group,
    audit_command,
    erase_command,
    subject_access_command,
    purge_command,
):
    cli.add_command(command)


def main() -> None:
    """Entry point of the `carepulse` console script."""
    cli.main(prog_name="carepulse")


if __name__ == "__main__":
    main()
