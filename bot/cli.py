"""The `carepulse` console command.

Every subcommand runs inside the app (so it reads the same configuration as the web
service) and prints what it did. Problems exit with status 1 and say what to fix.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext

from bot import create_app
from bot.clock import due_work
from bot.config import ConfigError
from bot.db import get_engine, get_session
from bot.outbound import Outbound
from bot.transports import TransportUnavailable, make_transports
from storage import db as storage_db
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
        session.commit()
    else:
        session.rollback()
    click.echo(report.summary())
    if not report.imported:
        sys.exit(1)


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

    Automatic sending with quiet hours and reminders is not switched on yet: the process
    starts, checks the database and idles, so that a deployment's process layout is final.
    """
    _require_migrated()
    click.echo("carepulse clock: running; automatic sending is not enabled yet (use send-due)")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    click.echo("carepulse clock: stopped")


@click.command("report")
@click.option("--programme", "programme_key", help="Programme key (default: the only one).")
@click.option("--pre", default="baseline", show_default=True, help="Wave key before.")
@click.option("--post", default="end", show_default=True, help="Wave key after.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Write CSV here.")
@with_appcontext
def report_command(programme_key: str | None, pre: str, post: str, out: Path | None) -> None:
    """Print response rates and pre/post change; with --out, also write them as CSV."""
    from bot.summary import programme_summary, resolve_programme

    _require_migrated()
    session = get_session()
    key = resolve_programme(session, programme_key)
    text, tables = programme_summary(session, key, pre, post)
    click.echo(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            table.to_csv(out / f"{name}.csv", index=False)
        click.echo(f"wrote {', '.join(f'{n}.csv' for n in tables)} to {out}")


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
    from bot.summary import programme_summary, resolve_programme

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
            text, _ = programme_summary(session, key, "baseline", "end")
            click.echo("")
            click.echo(text)
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

    from bot.demo import is_empty, seed

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    storage_db.upgrade(get_engine())
    session = get_session()
    if demo and is_empty(session):
        tick = seed(session, _outbound())
        session.commit()
        click.echo(f"loaded the demo programme: {tick.summary()}")
    settings = app.config["CAREPULSE"]
    url = f"http://{host}:{port}/"
    click.echo(f"carepulse is running at {url}")
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
    report_command,
    demo_command,
    serve_command,
):
    cli.add_command(command)


def main() -> None:
    """Entry point of the `carepulse` console script."""
    cli.main(prog_name="carepulse")


if __name__ == "__main__":
    main()
