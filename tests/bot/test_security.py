"""Web hardening: security headers on every page, no inline script or style, rate limits on
links, survey pages, sign-in and the API (never on Twilio's webhooks), request size limits,
no stack traces, and hostile text escaped wherever it can reach a page."""

from __future__ import annotations

import datetime as dt
import importlib.util
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from bot.config import ConfigError
from bot.manager_reports import report_token
from bot.outbound import Outbound
from bot.security import CONTENT_SECURITY_POLICY
from bot.transports import DevMailbox, DevPhone
from storage.accounts import create_account, issue_token
from storage.models import Invitation
from surveys.invitations import open_wave
from tests.conftest import TWILIO_TOKEN
from tests.support import browser as browser_support
from tests.support.web import PASSWORD, csrf_token, make_app, twilio_settings

NOW = dt.datetime.now(dt.UTC)
TEMPLATES = Path(__file__).resolve().parents[2] / "bot" / "templates"

HOME = '"><img src=x onerror=alert(1)> Court'
MANAGER_GIVEN, MANAGER_FAMILY = "<script>alert(1)</script>", "{{7*7}}"
MANAGER = f"{MANAGER_GIVEN} {MANAGER_FAMILY}"
WORKER_GIVEN = "javascript:alert(1)"
PROGRAMME = "<script>alert('programme')</script> {{7*7}}"
REPLY = '<script>alert(2)</script> javascript:alert(3) "><img src=x onerror=alert(4)>'

_INLINE_IN_TEMPLATES = [
    (re.compile(r"<script", re.I), "a <script> element"),
    (re.compile(r"<style", re.I), "a <style> element"),
    (re.compile(r"<[^>]*\sstyle\s*=", re.I), "a style attribute"),
    (re.compile(r"<[^>]*\son[a-z]+\s*=", re.I), "an event handler attribute"),
    (re.compile(r"(?:href|src|action)\s*=\s*[\"']?\s*javascript:", re.I), "a javascript: URL"),
]
"""Inline code in a template's source (Jinja tags make it unfit for an HTML parser)."""


class _InlineCode(HTMLParser):
    """Finds what the Content-Security-Policy would block, or what would run without it,
    in a page as the browser reads it (so escaped text inside attributes is not code)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self.found.append(f"a <{tag}> element")
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.found.append(f"<{tag} {name}=...>")
            url = (value or "").strip().lower()
            if name in ("href", "src", "action", "formaction") and url.startswith("javascript:"):
                self.found.append(f"<{tag} {name}={value!r}>")


def _fresh(session):
    """End the test's transaction and forget loaded rows, to see what the app committed."""
    session.rollback()
    session.expire_all()


def _text(response) -> str:
    return response.get_data(as_text=True)


def _no_inline_code(html: str, where: str) -> None:
    parser = _InlineCode()
    parser.feed(html)
    parser.close()
    assert parser.found == [], f"{where} has inline code: {parser.found}"


def _escaped(html: str, raw: str, where: str) -> None:
    """`raw` is on the page only in its escaped form."""
    assert str(escape(raw)) in html, f"{where} does not show {raw!r} (escaped)"
    if str(escape(raw)) != raw:
        assert raw not in html, f"{where} shows {raw!r} unescaped"


def _sign_in(client, email: str, password: str = PASSWORD, **environ):
    page = client.get("/login", environ_base=environ)
    form = {"csrf_token": csrf_token(_text(page)), "email": email, "password": password}
    return client.post("/login", data=form, environ_base=environ)


def _hostile_world(session, factory, app) -> dict:
    """A 360, a morale wave and an emailed self-report in a programme whose names are
    attacks; every invitation sent (development phone and mailbox); an admin account."""
    home = factory.home(HOME)
    manager = factory.person(
        home, role="manager", given_name=MANAGER_GIVEN, family_name=MANAGER_FAMILY
    )
    worker = factory.person(home, role="care_worker", given_name=WORKER_GIVEN)
    programme, wave = factory.programme(
        [home],
        [
            (
                "appraisal_360",
                {
                    "subject_role": "manager",
                    "raters": {"self": ["manager"], "staff": ["care_worker"]},
                },
                "sms",
            ),
            ("staff_morale", {"roles": ["care_worker"]}, "sms"),
            ("manager_self_report", {"roles": ["manager"]}, "email"),
        ],
        opens=NOW - dt.timedelta(hours=1),
        closes=NOW + dt.timedelta(days=7),
    )
    programme.name = PROGRAMME
    open_wave(session, wave, NOW)
    create_account(session, "admin@example.org", PASSWORD, "admin", name="Ada")
    session.commit()
    outbound = Outbound(app.config["CAREPULSE"], DevPhone(), DevMailbox())
    outbound.send_pending(session, NOW)
    session.commit()
    invitations = session.scalars(select(Invitation)).all()
    staff_360 = next(i for i in invitations if i.rater_relation == "staff")
    emailed = next(i for i in invitations if i.person_id == manager.id and i.rater_relation is None)
    with app.test_request_context():
        own_report = report_token(programme.key, manager.id)
    return {
        "key": programme.key,
        "manager": manager,
        "worker": worker,
        "staff_360": staff_360.token,
        "emailed": emailed.token,
        "own_report": own_report,
    }


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- headers, and no inline script or style -----------------------------------------------


def _every_page_type(app, world) -> dict[str, object]:
    """One response of every kind of page the app serves, by name."""
    pages: dict[str, object] = {}
    visitor = app.test_client()
    pages["start page, signed out"] = visitor.get("/")  # a redirect to sign in
    pages["sign-in"] = visitor.get("/login")
    pages["sign-in error"] = _sign_in(visitor, "admin@example.org", "wrong password")
    pages["not found"] = visitor.get("/no-such-page")
    pages["dev phone"] = visitor.get("/dev/phone")
    pages["dev mailbox"] = visitor.get("/dev/mailbox")
    pages["unknown link"] = visitor.get("/s/" + "A" * 32)
    pages["survey without a session"] = visitor.get("/survey")
    pages["invalid 360 link"] = visitor.get("/my-360/not-a-report-link")
    pages["own 360 report"] = visitor.get(f"/my-360/{world['own_report']}")
    pages["API without a token"] = visitor.get("/api/v1/programmes")
    pages["stylesheet"] = visitor.get("/static/carepulse.css")

    rater = app.test_client()
    pages["survey start"] = rater.get(f"/s/{world['staff_360']}", follow_redirects=True)
    pages["question"] = rater.get("/survey/q/1")
    csrf = csrf_token(_text(pages["question"]))
    pages["question error"] = rater.post("/survey/q/1", data={"csrf_token": csrf})
    pages["expired form"] = rater.post("/survey/q/1", data={"csrf_token": "forged"})
    pages["check answers"] = rater.get("/survey/check")
    rater.post("/survey/check", data={"csrf_token": csrf})
    pages["answers sent"] = rater.get("/survey/done")
    pages["link already used"] = rater.get(f"/s/{world['staff_360']}")

    mailreader = app.test_client()
    pages["unsubscribe"] = mailreader.get(f"/u/{world['emailed']}")
    unsubscribe_csrf = csrf_token(_text(pages["unsubscribe"]))
    pages["unsubscribe expired"] = mailreader.post(f"/u/{world['emailed']}", data={})
    pages["unsubscribed"] = mailreader.post(
        f"/u/{world['emailed']}", data={"csrf_token": unsubscribe_csrf}
    )
    pages["unsubscribe unknown"] = mailreader.get("/u/unknown")

    admin = app.test_client()
    assert _sign_in(admin, "admin@example.org").status_code == 303
    key = world["key"]
    pages["start page"] = admin.get("/")
    pages["dashboard"] = admin.get("/dashboard/")
    pages["report"] = admin.get(f"/dashboard/{key}/")
    pages["refused report"] = admin.get(f"/dashboard/{key}/?pre=no-such-wave")
    pages["managers"] = admin.get(f"/dashboard/{key}/managers/")
    pages["manager"] = admin.get(f"/dashboard/{key}/managers/{world['manager'].id}")
    # Pages other parts of the issue are adding, once their blueprints are registered.
    if "audit" in app.blueprints:
        pages["audit log"] = admin.get("/admin/audit")
    if "admin_people" in app.blueprints:
        pages["people"] = admin.get("/admin/people", query_string={"q": world["manager"].email})
        pages["person"] = admin.get(f"/admin/people/{world['manager'].id}")
    return pages


def test_every_page_type_has_the_security_headers_and_no_inline_code(client, session, factory, app):
    world = _hostile_world(session, factory, app)
    rendered: list[str] = []

    from flask import template_rendered

    def remember(sender, template, context, **extra):
        rendered.append(template.name)

    with template_rendered.connected_to(remember, app):
        pages = _every_page_type(app, world)

    for name, response in pages.items():
        headers = response.headers
        assert response.status_code < 500, name
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, name
        assert headers["X-Content-Type-Options"] == "nosniff", name
        assert headers["X-Frame-Options"] == "DENY", name
        assert "camera=()" in headers["Permissions-Policy"], name
        assert "Strict-Transport-Security" not in headers, f"{name}: HSTS over plain HTTP"
        if response.mimetype == "text/html":
            _no_inline_code(_text(response), name)
    policy = dict(part.split(" ", 1) for part in CONTENT_SECURITY_POLICY.split("; "))
    assert policy["default-src"] == "'none'"  # so no script-src: no script of any kind
    assert policy["style-src"] == policy["img-src"] == policy["form-action"] == "'self'"
    assert policy["frame-ancestors"] == policy["base-uri"] == "'none'"
    # Pages that set their own referrer policy keep it; the others get the default.
    assert pages["question"].headers["Referrer-Policy"] == "no-referrer"
    assert pages["unsubscribe"].headers["Referrer-Policy"] == "no-referrer"
    assert pages["sign-in"].headers["Referrer-Policy"] == "same-origin"
    assert pages["dashboard"].headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    # Every page template was drawn by the walk above: a new one must be added to it.
    pages_in_templates = {
        path.relative_to(TEMPLATES).as_posix()
        for path in TEMPLATES.rglob("*.html")
        if not path.name.startswith("_") and path.name not in ("base.html", "layout.html")
    }
    assert pages_in_templates - set(rendered) == set()


def test_no_template_has_inline_script_style_or_event_handlers():
    templates = sorted(TEMPLATES.rglob("*.html"))
    assert len(templates) > 15
    for path in templates:
        source = path.read_text(encoding="utf-8")
        for pattern, what in _INLINE_IN_TEMPLATES:
            found = pattern.search(source)
            assert found is None, f"{path.relative_to(TEMPLATES)} has {what}: {found[0][:80]!r}"


@pytest.mark.parametrize(
    ("settings", "headers", "expected"),
    [
        ({"PUBLIC_BASE_URL": "https://carepulse.example.org"}, {}, True),
        ({}, {}, False),
        ({}, {"X-Forwarded-Proto": "https"}, False),  # no trusted proxy: a header anyone sends
        ({"TRUSTED_PROXIES": "1"}, {"X-Forwarded-Proto": "https"}, True),
        ({"TRUSTED_PROXIES": "1"}, {"X-Forwarded-Proto": "http"}, False),
    ],
)
def test_hsts_is_sent_only_over_https(engine, database_url, tmp_path, settings, headers, expected):
    app = make_app(database_url, tmp_path, **settings)
    response = app.test_client().get("/login", headers=headers)
    hsts = response.headers.get("Strict-Transport-Security")
    if not expected:
        assert hsts is None
        return
    directives = [part.strip() for part in hsts.split(";")]
    max_age = int(next(d for d in directives if d.startswith("max-age="))[len("max-age=") :])
    assert max_age >= 365 * 24 * 3600 and "includeSubDomains" in directives


# --- rate limits ----------------------------------------------------------------------------


def _morale_invitations(session, factory, workers: int = 2) -> list[Invitation]:
    home = factory.home("Willow Court")
    for _ in range(workers):
        factory.person(home)
    _, wave = factory.programme(
        [home],
        [("staff_morale", {"roles": ["care_worker"]}, "sms")],
        opens=NOW - dt.timedelta(hours=1),
        closes=NOW + dt.timedelta(days=7),
    )
    open_wave(session, wave, NOW)
    session.commit()
    return session.scalars(select(Invitation).order_by(Invitation.id)).all()


def _is_too_many(response) -> None:
    """A plain 429 page that says to wait, with Retry-After, and nothing technical."""
    html = _text(response)
    assert response.status_code == 429, html
    assert int(response.headers["Retry-After"]) > 0
    assert "Wait a minute, then try again" in html
    assert "Traceback" not in html and "per 1 minute" not in html


def test_links_share_one_budget_per_address(engine, database_url, tmp_path):
    app = make_app(database_url, tmp_path, RATELIMIT_LINKS="3/minute;100/hour")
    scanner = app.test_client()
    me = {"REMOTE_ADDR": "203.0.113.9"}
    assert scanner.get("/s/" + "A" * 32, environ_base=me).status_code == 404
    assert scanner.get("/u/unknown", environ_base=me).status_code == 404
    assert scanner.get("/my-360/not-a-link", environ_base=me).status_code == 404
    _is_too_many(scanner.get("/s/" + "B" * 32, environ_base=me))
    _is_too_many(scanner.post("/u/unknown", environ_base=me))
    # Without a trusted proxy, X-Forwarded-For is anybody's header: it changes nothing.
    spoofed = scanner.get("/s/" + "C" * 32, environ_base=me, headers={"X-Forwarded-For": "1.2.3.4"})
    assert spoofed.status_code == 429
    elsewhere = {"REMOTE_ADDR": "203.0.113.10"}
    assert app.test_client().get("/s/" + "A" * 32, environ_base=elsewhere).status_code == 404
    # Pages that are not links are not counted.
    assert scanner.get("/login", environ_base=me).status_code == 200


def test_behind_a_trusted_proxy_each_client_address_is_counted(engine, database_url, tmp_path):
    app = make_app(database_url, tmp_path, TRUSTED_PROXIES="1", RATELIMIT_LINKS="2/minute")
    client = app.test_client()
    proxy = {"REMOTE_ADDR": "10.0.0.1"}

    def get(client_address: str):
        headers = {"X-Forwarded-For": client_address}
        return client.get("/s/" + "A" * 32, environ_base=proxy, headers=headers)

    assert [get("203.0.113.1").status_code for _ in range(3)] == [404, 404, 429]
    assert get("203.0.113.2").status_code == 404


def test_ipv6_clients_are_counted_by_their_64(engine, database_url, tmp_path):
    app = make_app(database_url, tmp_path, RATELIMIT_LINKS="2/minute")
    client = app.test_client()

    def get(address: str) -> int:
        return client.get("/u/unknown", environ_base={"REMOTE_ADDR": address}).status_code

    assert get("2001:db8:1:2::1") == 404
    assert get("2001:db8:1:2::ffff") == 404
    assert get("2001:db8:1:2:abcd::7") == 429  # the same /64: one subscriber
    assert get("2001:db8:1:3::1") == 404


def test_survey_pages_are_counted_per_respondent_not_per_address(
    engine, database_url, tmp_path, session, factory
):
    first, second = _morale_invitations(session, factory)
    app = make_app(database_url, tmp_path, RATELIMIT_SURVEY="3/minute")
    shared_wifi = {"REMOTE_ADDR": "198.51.100.20"}
    amara, bola = app.test_client(), app.test_client()
    assert amara.get(f"/s/{first.token}", environ_base=shared_wifi).status_code == 303
    assert bola.get(f"/s/{second.token}", environ_base=shared_wifi).status_code == 303
    pages = ["/survey", "/survey/q/1", "/survey", "/survey/q/1"]
    statuses = [amara.get(path, environ_base=shared_wifi).status_code for path in pages]
    assert statuses == [200, 200, 200, 429]
    assert bola.get("/survey", environ_base=shared_wifi).status_code == 200


def test_a_limit_set_to_off_is_not_applied(engine, database_url, tmp_path):
    app = make_app(database_url, tmp_path, RATELIMIT_LINKS="off")
    client = app.test_client()
    assert {client.get("/s/" + "A" * 32).status_code for _ in range(40)} == {404}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RATELIMIT_LINKS", "lots"),
        ("RATELIMIT_API", "120 a minute"),
        ("RATELIMIT_LOGIN_ACCOUNT", "5"),
        ("RATELIMIT_STORAGE_URI", "postgres://db.example/limits"),
        ("RATELIMIT_STORAGE_URI", "async+redis://localhost"),
    ],
)
def test_a_malformed_rate_limit_setting_is_named(tmp_path, database_url, name, value):
    with pytest.raises(ConfigError, match=name):
        make_app(database_url, tmp_path, **{name: value})


def test_a_store_whose_client_library_is_missing_stops_start_up(tmp_path, database_url):
    if importlib.util.find_spec("pymemcache") is not None:
        pytest.skip("pymemcache is installed: a memcached store can be used")
    with pytest.raises(ConfigError, match="RATELIMIT_STORAGE_URI cannot be used"):
        make_app(database_url, tmp_path, RATELIMIT_STORAGE_URI="memcached://127.0.0.1:11211")


def test_twilio_webhooks_are_never_rate_limited(engine, database_url, tmp_path):
    everything_tight = {
        name: "1/minute" for name in ("RATELIMIT_LINKS", "RATELIMIT_SURVEY", "RATELIMIT_API")
    }
    app = make_app(database_url, tmp_path, **twilio_settings(), **everything_tight)
    client = app.test_client()
    url = "http://127.0.0.1:5000/twilio/status"
    statuses = []
    for n in range(8):
        form = {"MessageSid": f"SM{n:032x}", "MessageStatus": "delivered"}
        signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, form)
        response = client.post(
            "/twilio/status", data=form, headers={"X-Twilio-Signature": signature}
        )
        statuses.append(response.status_code)
    assert statuses == [204] * 8


# --- signing in -----------------------------------------------------------------------------


def _accounts(session) -> None:
    from storage.models import Programme

    session.add(Programme(key="alpha", name="Alpha"))
    session.flush()
    create_account(session, "admin@example.org", PASSWORD, "admin", name="Ada")
    create_account(session, "eval@example.org", PASSWORD, "evaluator", programme_keys=["alpha"])
    create_account(session, "other@example.org", PASSWORD, "evaluator", programme_keys=["alpha"])
    session.commit()


def _signed_in(client) -> bool:
    with client.session_transaction() as cookie:
        return "account_id" in cookie


def test_an_account_with_too_many_failures_is_refused_even_the_right_password(
    engine, database_url, tmp_path, session
):
    _accounts(session)
    app = make_app(
        database_url,
        tmp_path,
        RATELIMIT_LOGIN_ACCOUNT="2/15 minutes",
        RATELIMIT_LOGIN_ADDRESS="50/hour",
    )
    here = {"REMOTE_ADDR": "198.51.100.1"}
    attacker = app.test_client()
    assert _sign_in(attacker, "admin@example.org", "guess 1", **here).status_code == 200
    assert _sign_in(attacker, "ADMIN@example.org ", "guess 2", **here).status_code == 200
    refused = _sign_in(attacker, "admin@example.org", PASSWORD, **here)
    assert refused.status_code == 429
    assert "Too many attempts to sign in" in _text(refused)
    assert not _signed_in(attacker)
    # The account, from anywhere; other accounts from here still sign in.
    elsewhere = app.test_client()
    assert (
        _sign_in(elsewhere, "admin@example.org", **{"REMOTE_ADDR": "192.0.2.7"}).status_code == 429
    )
    colleague = app.test_client()
    assert _sign_in(colleague, "eval@example.org", **here).status_code == 303
    assert _signed_in(colleague)


def test_signing_in_clears_the_accounts_failures(engine, database_url, tmp_path, session):
    _accounts(session)
    app = make_app(database_url, tmp_path, RATELIMIT_LOGIN_ACCOUNT="2/15 minutes")
    for _ in range(3):
        person = app.test_client()
        assert _sign_in(person, "eval@example.org", "typo").status_code == 200
        assert _sign_in(person, "eval@example.org").status_code == 303
    # Unknown addresses are counted the same way as accounts, so 429 tells nothing.
    stranger = app.test_client()
    for _ in range(2):
        assert _sign_in(stranger, "nobody@example.org", "guess").status_code == 200
    assert _sign_in(stranger, "nobody@example.org", "guess").status_code == 429


def test_an_address_with_too_many_failures_is_refused_for_every_account(
    engine, database_url, tmp_path, session
):
    _accounts(session)
    app = make_app(
        database_url,
        tmp_path,
        RATELIMIT_LOGIN_ACCOUNT="50/15 minutes",
        RATELIMIT_LOGIN_ADDRESS="3/hour",
    )
    here = {"REMOTE_ADDR": "198.51.100.2"}
    assert _sign_in(app.test_client(), "a@example.org", "guess", **here).status_code == 200
    assert _sign_in(app.test_client(), "b@example.org", "guess", **here).status_code == 200
    # A good password from the same address does not wipe the address's count...
    assert _sign_in(app.test_client(), "admin@example.org", **here).status_code == 303
    assert _sign_in(app.test_client(), "c@example.org", "guess", **here).status_code == 200
    # ...so after the third failure, every account is refused from here, but not elsewhere.
    assert _sign_in(app.test_client(), "other@example.org", **here).status_code == 429
    there = {"REMOTE_ADDR": "198.51.100.3"}
    assert _sign_in(app.test_client(), "other@example.org", **there).status_code == 303


def test_the_api_is_limited_per_token(engine, database_url, tmp_path, session):
    _accounts(session)
    from storage.models import Account

    accounts = {a.email: a for a in session.scalars(select(Account))}
    first = issue_token(session, accounts["eval@example.org"])[1]
    second = issue_token(session, accounts["other@example.org"])[1]
    session.commit()
    app = make_app(database_url, tmp_path, RATELIMIT_API="3/minute")
    client = app.test_client()
    statuses = [
        client.get("/api/v1/programmes", headers=_bearer(first)).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 200]
    refused = client.get("/api/v1/programmes", headers=_bearer(first))
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    body = refused.get_json()
    assert body["status"] == 429 and "too many requests" in body["error"]
    assert client.get("/api/v1/programmes", headers=_bearer(second)).status_code == 200


# --- one count for every worker, kept across restarts ------------------------------------

MID_WINDOW = dt.datetime(2027, 3, 1, 9, 37, 30, tzinfo=dt.UTC)
"""Halfway through a minute, a quarter of an hour and far from the hour's edges: a test
that starts here (the clock running on) never crosses a window's edge, where the sliding
window lets the previous window's count fade."""


SHARED_COUNTS = {"RATELIMIT_STORAGE_URI": "database://"}


def _workers(database_url: str, tmp_path: Path, count: int = 2, **settings) -> list:
    """`count` apps built from the same settings on one database, as gunicorn's workers are
    (counting in the database, as they do on PostgreSQL by default, unless told otherwise)."""
    settings = {**SHARED_COUNTS, **settings}
    return [make_app(database_url, tmp_path, **settings) for _ in range(count)]


def _stored_counts(engine) -> dict[str, int]:
    from storage.models import RateLimitCounter

    with engine.connect() as conn:
        return dict(conn.execute(select(RateLimitCounter.key, RateLimitCounter.count)).all())


def test_failed_sign_ins_on_different_workers_count_against_one_limit(
    engine, database_url, tmp_path, session, time_machine
):
    time_machine.move_to(MID_WINDOW, tick=True)
    _accounts(session)
    workers = _workers(
        database_url,
        tmp_path,
        RATELIMIT_LOGIN_ACCOUNT="4/15 minutes",
        RATELIMIT_LOGIN_ADDRESS="50/hour",
    )
    # The load balancer sends the attempts to one worker, then the other.
    statuses = [
        _sign_in(workers[n % 2].test_client(), "admin@example.org", f"guess {n}").status_code
        for n in range(4)
    ]
    assert statuses == [200] * 4  # each checked (and refused as a wrong password)
    for worker in workers:
        refused = _sign_in(worker.test_client(), "admin@example.org", PASSWORD)
        assert refused.status_code == 429
        assert "Too many attempts to sign in" in _text(refused)


def test_with_memory_counting_each_worker_counts_only_its_own_attempts(
    engine, database_url, tmp_path, session, time_machine
):
    time_machine.move_to(MID_WINDOW, tick=True)
    _accounts(session)
    workers = _workers(
        database_url,
        tmp_path,
        RATELIMIT_STORAGE_URI="memory://",
        RATELIMIT_LOGIN_ACCOUNT="4/15 minutes",
    )
    for n in range(4):
        assert (
            _sign_in(workers[n % 2].test_client(), "admin@example.org", "guess").status_code == 200
        )
    # Two failures on each: neither worker has seen four.
    assert _sign_in(workers[0].test_client(), "admin@example.org", PASSWORD).status_code == 303
    assert _stored_counts(engine) == {}


def test_link_requests_on_different_workers_count_against_one_budget(
    engine, database_url, tmp_path, time_machine
):
    time_machine.move_to(MID_WINDOW, tick=True)
    workers = _workers(database_url, tmp_path, count=3, RATELIMIT_LINKS="5/minute;100/hour")
    scanner = {"REMOTE_ADDR": "203.0.113.9"}
    statuses = [
        workers[n % 3].test_client().get("/s/" + "A" * 32, environ_base=scanner).status_code
        for n in range(5)
    ]
    assert statuses == [404] * 5
    for worker in workers:
        _is_too_many(worker.test_client().get("/s/" + "B" * 32, environ_base=scanner))
    elsewhere = {"REMOTE_ADDR": "203.0.113.10"}
    assert workers[0].test_client().get("/u/unknown", environ_base=elsewhere).status_code == 404


def test_counts_are_kept_across_a_restart_until_their_window_has_passed(
    engine, database_url, tmp_path, session, time_machine
):
    time_machine.move_to(MID_WINDOW, tick=True)
    _accounts(session)
    limits = {"RATELIMIT_LOGIN_ACCOUNT": "3/15 minutes", "RATELIMIT_LINKS": "2/hour"}
    limits.update(SHARED_COUNTS)
    before = make_app(database_url, tmp_path, **limits)
    assert _sign_in(before.test_client(), "eval@example.org", "guess 1").status_code == 200
    assert _sign_in(before.test_client(), "eval@example.org", "guess 2").status_code == 200
    assert before.test_client().get("/u/unknown").status_code == 404
    assert before.test_client().get("/u/unknown").status_code == 404

    after = make_app(database_url, tmp_path, **limits)  # the service restarted
    assert _sign_in(after.test_client(), "eval@example.org", "guess 3").status_code == 200
    assert _sign_in(after.test_client(), "eval@example.org").status_code == 429
    _is_too_many(after.test_client().get("/u/unknown"))

    # Two windows on, the sliding window has let the failures go.
    time_machine.move_to(MID_WINDOW + dt.timedelta(minutes=30), tick=True)
    assert _sign_in(after.test_client(), "eval@example.org").status_code == 303


def test_the_stored_counts_hold_no_email_address_or_phone_number(
    engine, database_url, tmp_path, session, time_machine
):
    time_machine.move_to(MID_WINDOW, tick=True)
    _accounts(session)
    app = make_app(database_url, tmp_path, **SHARED_COUNTS)
    here = {"REMOTE_ADDR": "198.51.100.4"}
    for who in ("Admin@Example.org", "admin@example.org", "+447700900123", "07700 900123"):
        assert _sign_in(app.test_client(), who, "guess", **here).status_code == 200
    keys = list(_stored_counts(engine))
    # One count per account tried (an email's case does not matter) and one for the address.
    assert sum("login-account" in key for key in keys) == 3
    assert sum("login-address" in key and "198.51.100.4" in key for key in keys) == 1
    stored = " ".join(keys).casefold()
    for raw in ("admin", "example.org", "@", "7700900123", "7700 900123", "447700900123"):
        assert raw not in stored


def test_without_the_counts_table_links_still_answer_and_are_limited_in_memory(tmp_path):
    # A database not migrated yet (or unreachable): the counting falls back to this process.
    unmigrated = f"sqlite:///{tmp_path / 'unmigrated.sqlite3'}"
    app = make_app(unmigrated, tmp_path, RATELIMIT_LINKS="2/hour", **SHARED_COUNTS)
    client = app.test_client()
    statuses = [client.get("/s/not-a-survey-token").status_code for _ in range(2)]
    assert statuses == [404, 404]
    _is_too_many(client.get("/s/not-a-survey-token"))


# --- request size -------------------------------------------------------------------------

MIB = 1024 * 1024


def _multipart(fields: list[tuple[str, str]]) -> tuple[bytes, str]:
    boundary = "carepulse-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields
    ]
    body = "".join(parts) + f"--{boundary}--\r\n"
    return body.encode(), f"multipart/form-data; boundary={boundary}"


def _is_too_large(response) -> None:
    html = _text(response)
    assert response.status_code == 413, html[:300]
    assert "too large" in html and "Traceback" not in html


def test_a_huge_body_is_a_plain_413_page_or_json_under_the_api(client):
    body = b"email=" + b"x" * (2 * MIB)
    form = "application/x-www-form-urlencoded"
    _is_too_large(client.post("/login", data=body, content_type=form))
    _is_too_large(client.post("/survey/q/1", data=body, content_type=form))
    # Even where no view reads a body at all.
    _is_too_large(client.post("/", data=b"x" * (2 * MIB), content_type="text/plain"))
    api = client.post("/api/v1/programmes", data=b"{}" * MIB, content_type="application/json")
    assert api.status_code == 413
    assert api.get_json() == {
        "error": "What was sent is too large. Nothing was saved.",
        "status": 413,
    }


def test_a_form_of_10000_fields_is_refused_whatever_its_encoding(client):
    fields = [(f"f{n}", "1") for n in range(10_000)]
    urlencoded = "&".join(f"{name}={value}" for name, value in fields)
    assert len(urlencoded) < MIB  # refused for its fields, not its size
    _is_too_large(
        client.post("/login", data=urlencoded, content_type="application/x-www-form-urlencoded")
    )
    body, content_type = _multipart(fields)
    assert len(body) < MIB
    assert client.post("/login", data=body, content_type=content_type).status_code == 413


def test_a_huge_multipart_field_is_refused(client):
    body, content_type = _multipart([("email", "x" * 200_000)])
    assert client.post("/login", data=body, content_type=content_type).status_code == 413


def test_ordinary_forms_and_twilio_webhooks_fit_within_the_limits(engine, database_url, tmp_path):
    app = make_app(database_url, tmp_path, **twilio_settings())
    client = app.test_client()
    # A delivery report with more fields than Twilio ever sends (media, add-ons...).
    form = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered"}
    form.update({f"MediaUrl{n}": f"https://api.twilio.com/media/{n}" for n in range(60)})
    form["AddOns"] = '{"status": "successful", "results": {}}' + " " * 5000
    url = "http://127.0.0.1:5000/twilio/status"
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(url, form)
    response = client.post("/twilio/status", data=form, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 204
    # A sign-in form with its fields: read (and refused for its CSRF token), not 413.
    page = client.post(
        "/login", data={"email": "a@example.org", "password": "p", "csrf_token": "x"}
    )
    assert page.status_code == 400 and "This page has expired" in _text(page)


# --- errors ---------------------------------------------------------------------------------


def test_an_exception_in_a_view_shows_no_traceback(app):
    def boom():
        raise RuntimeError("internal detail: /srv/carepulse/secret.py line 7")

    app.add_url_rule("/test/boom", "test_boom", boom)
    app.add_url_rule("/api/v1/test-boom", "test_api_boom", boom)
    client = app.test_client()
    page = client.get("/test/boom")
    html = _text(page)
    assert page.status_code == 500
    assert "Something went wrong" in html
    for leak in ("Traceback", "RuntimeError", "internal detail", "secret.py"):
        assert leak not in html
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    api = client.get("/api/v1/test-boom")
    assert api.status_code == 500
    assert api.get_json() == {"error": "something went wrong on our side", "status": 500}


# --- hostile text is escaped ----------------------------------------------------------------


def test_hostile_names_programmes_and_replies_are_escaped_on_every_page(
    client, session, factory, app
):
    world = _hostile_world(session, factory, app)
    worker = world["worker"]
    reply = client.post(f"/dev/phone/{worker.mobile}/reply", data={"body": REPLY})
    assert reply.status_code == 302
    key, manager = world["key"], world["manager"]

    def shows(page, *texts: str, where: str) -> str:
        assert page.status_code == 200, where
        html = _text(page)
        for text in texts:
            _escaped(html, text, where)
        _no_inline_code(html, where)
        return html

    admin = app.test_client()
    assert _sign_in(admin, "admin@example.org").status_code == 303
    shows(admin.get("/"), PROGRAMME, HOME, where="start page")
    phone = shows(client.get("/dev/phone"), MANAGER, HOME, WORKER_GIVEN, REPLY, where="phone")
    assert "javascript:alert(3)" in phone  # shown as text, never made a link
    shows(client.get("/dev/mailbox"), PROGRAMME, MANAGER_GIVEN, where="mailbox")
    shows(client.get(f"/u/{world['emailed']}"), PROGRAMME, where="unsubscribe page")
    shows(client.get(f"/my-360/{world['own_report']}"), MANAGER, where="manager's own report")

    rater = app.test_client()
    start = rater.get(f"/s/{world['staff_360']}", follow_redirects=True)
    shows(start, f"{MANAGER}, {HOME}", where="survey start page")
    shows(rater.get("/survey/q/1"), MANAGER, where="survey question")

    assert _sign_in(client, "admin@example.org").status_code == 303
    shows(client.get("/dashboard/"), PROGRAMME, where="dashboard")
    shows(client.get(f"/dashboard/{key}/"), PROGRAMME, HOME, where="report tables")
    shows(client.get(f"/dashboard/{key}/managers/"), MANAGER, where="managers list")
    shows(client.get(f"/dashboard/{key}/managers/{manager.id}"), MANAGER, where="360 report")
    if "admin_people" in app.blueprints:
        found = client.get("/admin/people", query_string={"q": manager.email})
        shows(found, MANAGER, HOME, where="people search")
        shows(client.get(f"/admin/people/{manager.id}"), MANAGER, HOME, where="person page")


def test_a_javascript_url_is_never_where_sign_in_goes_next(client, session):
    _accounts(session)
    page = _text(client.get("/login?next=javascript:alert(document.cookie)"))
    assert 'name="next" value="/"' in page and "javascript:" not in page
    form = {
        "csrf_token": csrf_token(page),
        "email": "admin@example.org",
        "password": PASSWORD,
        "next": "javascript:alert(document.cookie)",
    }
    assert client.post("/login", data=form).headers["Location"] == "/"


# --- in a real browser ----------------------------------------------------------------------

browser = browser_support.browser
live_site = browser_support.live_site


@pytest.mark.browser
def test_chromium_applies_the_policy_and_blocks_nothing_the_pages_use(
    browser, live_site, session, factory
):
    world = _hostile_world(session, factory, live_site.app)
    page = browser_support.new_page(browser, viewport={"width": 1024, "height": 900})
    complaints: list[str] = []
    page.on("console", lambda message: complaints.append(message.text))
    page.on("dialog", lambda dialog: complaints.append(f"a script ran: {dialog.message}"))
    try:
        page.goto(live_site(f"/s/{world['staff_360']}"))
        browser_support.expect(page.locator("h1")).to_be_visible()
        page.goto(live_site("/dev/phone"))
        page.goto(live_site("/login"))
        page.get_by_label("Email address").fill("admin@example.org")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        browser_support.expect(page.get_by_text("Signed in as Ada")).to_be_visible()
        page.goto(live_site(f"/dashboard/{world['key']}/"))
        charts = page.locator("figure.chart img")
        assert charts.count() > 0
        for n in range(charts.count()):
            image = charts.nth(n)
            image.scroll_into_view_if_needed()
            browser_support.expect(image).to_have_js_property("complete", True)
            assert image.evaluate("img => img.naturalWidth") > 0
        header = page.locator("header.header")
        assert header.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(11, 12, 12)"
        sign_out = page.get_by_role("button", name="Sign out")
        assert sign_out.evaluate("e => getComputedStyle(e).fontSize") == "16px"
    finally:
        page.context.close()
    blocked = [text for text in complaints if "Content Security Policy" in text or "script" in text]
    assert blocked == []
