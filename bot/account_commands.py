"""`carepulse user ...`: the accounts of programme leads, evaluators and administrators.

Passwords are never arguments (they would land in the shell's history and in `ps`): they
are typed at a hidden prompt, twice, or piped in with `--password-stdin`. An API token is
printed once, when it is made; only its hash is kept. Problems exit with status 1 (or 2
for a malformed command line) and a message naming what to fix, never a traceback.
"""

from __future__ import annotations

import datetime as dt
import sys

import click
from flask.cli import with_appcontext
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bot.db import get_engine, get_session
from storage import db as storage_db
from storage.accounts import (
    AccountError,
    check_password,
    create_account,
    find_account,
    find_token_by_prefix,
    issue_token,
    programmes_by_key,
    remove_account,
    revoke_token,
    set_password,
)
from storage.audit import console_actor, record, safe_text
from storage.models import Account
from storage.vocabulary import ACCOUNT_ROLES


def _session() -> Session:
    if not storage_db.is_migrated(get_engine()):
        raise click.ClickException("the database is not migrated: run `carepulse db upgrade`")
    return get_session()


def _account(session: Session, email: str) -> Account:
    account = find_account(session, email)
    if account is None:
        raise click.ClickException(f"no account for {email.strip().lower()}")
    return account


def _typed_password(value: str) -> str:
    try:
        check_password(value)
    except AccountError as exc:
        # A UsageError from a prompt's value_proc makes click say why and ask again.
        raise click.UsageError(str(exc)) from None
    return value


def _read_password(from_stdin: bool) -> str:
    """The new password, from stdin's first line or a hidden prompt asked twice."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        try:
            check_password(password)
        except AccountError as exc:
            raise click.ClickException(str(exc)) from None
        return password
    return click.prompt(
        "Password (at least 12 characters)",
        hide_input=True,
        confirmation_prompt="Type the password again",
        value_proc=_typed_password,
    )


@click.group("user")
def user_group() -> None:
    """Accounts that sign in to the dashboard and call the API."""


@user_group.command("add")
@click.argument("email")
@click.option("--role", required=True, type=click.Choice(ACCOUNT_ROLES), help="What they may do.")
@click.option(
    "--programme",
    "programmes",
    multiple=True,
    metavar="KEY",
    help="A programme they see (repeat for more); needed for programme leads and evaluators.",
)
@click.option("--name", default="", help="Their name, as shown when they are signed in.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
def add_command(
    email: str, role: str, programmes: tuple[str, ...], name: str, password_stdin: bool
) -> None:
    """Create an account for EMAIL; asks for its password."""
    if role != "admin" and not programmes:
        raise click.UsageError(f"say which programme this {role} sees: --programme KEY")
    if role == "admin" and programmes:
        raise click.UsageError("an admin sees every programme: leave out --programme")
    session = _session()
    # Refuse what cannot be created before asking for a password nobody will use.
    if find_account(session, email) is not None:
        raise click.ClickException(f"an account for {email.strip().lower()} already exists")
    try:
        programmes_by_key(session, programmes)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    password = _read_password(password_stdin)
    try:
        account = create_account(
            session, email, password, role, name=name, programme_keys=programmes
        )
        record(
            session,
            "account_add",
            actor=console_actor(),
            target=f"account:{account.email}",
            detail={"role": role, "programmes": sorted(p.key for p in account.programmes)},
        )
        session.commit()
    except AccountError as exc:
        session.rollback()
        raise click.ClickException(str(exc)) from None
    except IntegrityError:
        session.rollback()  # another process created it since we looked
        raise click.ClickException(
            f"an account for {email.strip().lower()} already exists"
        ) from None
    scope = ", ".join(p.key for p in account.programmes) or "every programme"
    click.echo(f"created {account.email} ({account.role}; sees {scope})")


@user_group.command("password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@with_appcontext
def password_command(email: str, password_stdin: bool) -> None:
    """Set a new password for EMAIL (signs it out of every browser)."""
    session = _session()
    account = _account(session, email)
    set_password(session, account, _read_password(password_stdin))
    record(session, "account_password", actor=console_actor(), target=f"account:{account.email}")
    session.commit()
    click.echo(f"new password set for {account.email}")


@user_group.command("remove")
@click.argument("email")
@with_appcontext
def remove_command(email: str) -> None:
    """Stop EMAIL signing in and revoke its API tokens (the account is kept, inactive)."""
    session = _session()
    account = _account(session, email)
    if not account.active:
        click.echo(f"{account.email} was already removed")
        return
    revoked = remove_account(session, account)
    record(
        session,
        "account_remove",
        actor=console_actor(),
        target=f"account:{account.email}",
        detail={"tokens_revoked": revoked},
    )
    session.commit()
    click.echo(f"removed {account.email}: it can no longer sign in; {revoked} API token(s) revoked")


@user_group.command("token")
@click.argument("email")
@click.option("--label", default="", help="What the token is for, e.g. 'R analysis'.")
@with_appcontext
def token_command(email: str, label: str) -> None:
    """Make an API token for EMAIL and print it, once."""
    session = _session()
    account = _account(session, email)
    try:
        token, plaintext = issue_token(session, account, label)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from None
    # The prefix names the token publicly (`user list` shows it); the secret is never kept.
    record(
        session,
        "token_issue",
        actor=console_actor(),
        target=f"account:{account.email}",
        detail={"token_prefix": token.prefix, "label": safe_text(label)},
    )
    session.commit()
    click.echo(f"API token cp_{token.prefix} for {account.email} ({account.role}):")
    click.echo(plaintext)
    click.echo(
        "Copy it now: it will not be shown again. Send it as `Authorization: Bearer <token>`."
    )


@user_group.command("revoke")
@click.argument("prefix")
@with_appcontext
def revoke_command(prefix: str) -> None:
    """Revoke the API token whose prefix (as `user list` shows it) is PREFIX."""
    session = _session()
    token = find_token_by_prefix(session, prefix)
    if token is None:
        raise click.ClickException(
            f"no API token with prefix {prefix!r} (see `carepulse user list`)"
        )
    if not revoke_token(session, token):
        click.echo(
            f"token cp_{token.prefix} was already revoked ({token.revoked_at:%Y-%m-%d %H:%M} UTC)"
        )
        return
    record(
        session,
        "token_revoke",
        actor=console_actor(),
        target=f"account:{token.account.email}",
        detail={"token_prefix": token.prefix},
    )
    session.commit()
    click.echo(f"revoked token cp_{token.prefix} of {token.account.email}")


def _when(value: dt.datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else "never"


@user_group.command("list")
@with_appcontext
def list_command() -> None:
    """List accounts, what they see, and their API tokens (never a password or a token)."""
    session = _session()
    accounts = session.scalars(select(Account).order_by(Account.email)).all()
    if not accounts:
        click.echo("no accounts yet: add one with `carepulse user add`")
        return
    for account in accounts:
        state = "" if account.active else " [removed]"
        scope = ", ".join(p.key for p in account.programmes) or (
            "every programme" if account.role == "admin" else "no programme"
        )
        click.echo(
            f"{account.email}{state}  {account.role}  {account.name or '-'}  sees: {scope}"
            f"  last sign-in: {_when(account.last_login_at)}"
        )
        for token in account.tokens:
            status = f"revoked {_when(token.revoked_at)}" if token.revoked_at else "live"
            click.echo(
                f"    token cp_{token.prefix}  {token.label or '-'}  {status}"
                f"  created {_when(token.created_at)}  last used {_when(token.last_used_at)}"
            )
