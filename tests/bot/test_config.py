"""Configuration: safe embedded defaults, and a start-up error naming any bad setting."""

from __future__ import annotations

import pytest

from bot import create_app
from bot.config import ConfigError, load_settings

CLEAN = {
    name: ""
    for name in (
        "DATABASE_URL",
        "PUBLIC_BASE_URL",
        "SECRET_KEY",
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_FROM_NUMBER",
        "TWILIO_MESSAGING_SERVICE_SID",
        "TWILIO_API_BASE_URL",
        "SMTP_HOST",
        "SMTP_PORT",
        "SMTP_USERNAME",
        "SMTP_PASSWORD",
        "SMTP_STARTTLS",
        "MAIL_FROM",
        "TIMEZONE",
        "PORT",
    )
}
SID = "AC" + "0" * 32


def settings(tmp_path, **values):
    return load_settings({**CLEAN, "INSTANCE_PATH": str(tmp_path), **values})


def test_embedded_defaults(tmp_path):
    s = settings(tmp_path)
    assert s.database_url == f"sqlite:///{tmp_path / 'carepulse.sqlite3'}"
    assert s.public_base_url == "http://127.0.0.1:5000"
    assert (s.sms_transport, s.email_transport) == ("dev-phone", "dev-mailbox")
    assert s.timezone == "Europe/London"
    # the generated secret key is kept, so sessions survive a restart
    assert len(s.secret_key) >= 32
    assert settings(tmp_path).secret_key == s.secret_key


def test_production_settings_parse(tmp_path):
    s = settings(
        tmp_path,
        DATABASE_URL="postgres://u:p@db.example/cp",
        SECRET_KEY="x" * 40,
        PUBLIC_BASE_URL="https://surveys.example.org/",
        TWILIO_ACCOUNT_SID=SID,
        TWILIO_AUTH_TOKEN="secret",
        TWILIO_FROM_NUMBER="+447700900123",
        SMTP_HOST="smtp.example.org",
        MAIL_FROM="surveys@example.org",
    )
    assert s.database_url == "postgresql+psycopg://u:p@db.example/cp"
    assert s.public_base_url == "https://surveys.example.org"
    assert s.twilio and s.twilio.from_number == "+447700900123"
    assert s.smtp and (s.smtp.port, s.smtp.starttls) == (587, True)
    assert (s.sms_transport, s.email_transport) == ("twilio", "smtp")


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"DATABASE_URL": "mysql://x/y"}, "DATABASE_URL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        ({"PUBLIC_BASE_URL": "surveys.example.org"}, "PUBLIC_BASE_URL"),
        ({"TIMEZONE": "Mars/Olympus"}, "TIMEZONE"),
        ({"TWILIO_AUTH_TOKEN": "t"}, "TWILIO_ACCOUNT_SID"),
        ({"TWILIO_ACCOUNT_SID": "AC123", "TWILIO_AUTH_TOKEN": "t"}, "TWILIO_ACCOUNT_SID"),
        ({"TWILIO_ACCOUNT_SID": SID}, "TWILIO_AUTH_TOKEN"),
        (
            {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": "t", "SECRET_KEY": "k" * 20},
            "TWILIO_FROM_NUMBER",
        ),
        (
            {
                "TWILIO_ACCOUNT_SID": SID,
                "TWILIO_AUTH_TOKEN": "t",
                "TWILIO_FROM_NUMBER": "07700900123",
                "SECRET_KEY": "k" * 20,
            },
            "TWILIO_FROM_NUMBER",
        ),
        (
            {
                "TWILIO_ACCOUNT_SID": SID,
                "TWILIO_AUTH_TOKEN": "t",
                "TWILIO_FROM_NUMBER": "+447700900123",
            },
            "SECRET_KEY",
        ),
        (
            {
                "TWILIO_API_BASE_URL": "ftp://x",
                "TWILIO_ACCOUNT_SID": SID,
                "TWILIO_AUTH_TOKEN": "t",
                "TWILIO_FROM_NUMBER": "+447700900123",
                "SECRET_KEY": "k" * 20,
            },
            "TWILIO_API_BASE_URL",
        ),
        ({"SMTP_PORT": "25"}, "SMTP_HOST"),
        (
            {
                "SMTP_HOST": "smtp.example.org",
                "SMTP_PORT": "smtp",
                "MAIL_FROM": "a@example.org",
                "SECRET_KEY": "k" * 20,
            },
            "SMTP_PORT",
        ),
        ({"SMTP_HOST": "smtp.example.org", "SECRET_KEY": "k" * 20}, "MAIL_FROM"),
        (
            {
                "SMTP_HOST": "smtp.example.org",
                "MAIL_FROM": "a@example.org",
                "SECRET_KEY": "k" * 20,
                "SMTP_STARTTLS": "maybe",
            },
            "SMTP_STARTTLS",
        ),
        (
            {
                "SMTP_HOST": "smtp.example.org",
                "MAIL_FROM": "a@example.org",
                "SECRET_KEY": "k" * 20,
                "SMTP_USERNAME": "u",
            },
            "SMTP_PASSWORD",
        ),
        ({"MAIL_FROM": "not-an-address"}, "MAIL_FROM"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
    ],
)
def test_bad_setting_is_named(tmp_path, values, named):
    with pytest.raises(ConfigError, match=named):
        settings(tmp_path, **values)


def test_cli_reports_a_bad_setting_and_exits(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from bot.cli import cli

    monkeypatch.setenv("TIMEZONE", "Nowhere/Special")
    monkeypatch.setenv("INSTANCE_PATH", str(tmp_path))
    result = CliRunner().invoke(cli, ["db", "current"])
    assert result.exit_code == 2
    assert "configuration error: TIMEZONE='Nowhere/Special'" in result.output


def test_app_factory_uses_test_config(tmp_path):
    app = create_app(
        {**CLEAN, "INSTANCE_PATH": str(tmp_path), "SECRET_KEY": "s" * 20, "TESTING": True}
    )
    assert app.config["TESTING"] is True
    assert app.config["SECRET_KEY"] == "s" * 20
    assert "devtools" in app.blueprints


def test_rate_limits_count_in_postgresql_and_in_memory_on_sqlite_unless_told(tmp_path):
    postgres = "postgresql+psycopg://carepulse@db.example/carepulse"
    on_postgres = settings(tmp_path, DATABASE_URL=postgres, RATELIMIT_STORAGE_URI="")
    assert on_postgres.rate_limits.storage_uri == "database://"
    # SQLite serves one development process: nothing to share, and a count written between
    # a request's read and its write would lock that write out.
    assert settings(tmp_path).rate_limits.storage_uri == "memory://"
    on_sqlite = settings(tmp_path, RATELIMIT_STORAGE_URI="database://")
    assert on_sqlite.rate_limits.storage_uri == "database://"
    memory = settings(tmp_path, DATABASE_URL=postgres, RATELIMIT_STORAGE_URI="memory://")
    assert memory.rate_limits.storage_uri == "memory://"


def test_the_database_rate_limit_store_takes_no_url_of_its_own(tmp_path):
    with pytest.raises(ConfigError, match="RATELIMIT_STORAGE_URI") as refused:
        settings(tmp_path, RATELIMIT_STORAGE_URI="database://carepulse:s3cret@db.example/limits")
    assert "database://" in str(refused.value) and "DATABASE_URL" in str(refused.value)
    assert "s3cret" not in str(refused.value)
