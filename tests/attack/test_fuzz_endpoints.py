"""Whatever reaches any route of the app, it never answers 500 nor shows a traceback.

Hypothesis picks a route from `app.url_map` (every one, so a new route is fuzzed without
editing this file), a method (the route's, or one it does not take), path segments (real
tokens and keys, or hostile text: NUL, right-to-left overrides, emoji, 1,600+ characters),
a query string (also malformed percent-encoding), a form or raw body, and headers
(including forged cookies, bearer tokens and Twilio signatures). It sends them as four
kinds of caller: a stranger, a care worker inside their survey, a signed-in admin (with an
API token), and a stranger against a deployment with Twilio and SMTP configured, where an
unsigned webhook must be refused with 403 (signed ones: tests/bot/test_webhook_fuzz.py).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select

from bot.cli import cli
from bot.manager_reports import report_token
from reports.service import TABLE_TITLES
from storage.accounts import create_account, issue_token
from storage.models import Invitation
from surveys.answers import complete_response, record_answer
from surveys.catalogue import definition_of
from surveys.invitations import open_wave
from tests.support.hostile import as_header_value, hostile_text
from tests.support.web import PASSWORD, csrf_token, make_app, sign_in, twilio_settings

NOW = dt.datetime.now(dt.UTC)
STAFF_360 = {
    "subject_role": "manager",
    "raters": {"self": ["manager"], "staff": ["care_worker"]},
}
ASKS = [
    ("staff_morale", {"roles": ["care_worker"]}, "sms"),
    ("appraisal_360", STAFF_360, "email"),
    ("manager_self_report", {"roles": ["manager"]}, "email"),
]
METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
QUERY_KEYS = ("pre", "post", "cohort", "home", "role", "channel", "next", "change", "format")
QUERY_VALUES = ("baseline", "end", "Willow Court", "care_worker", "manager", "sms", "c1", "1")
"""Real waves, homes, roles, channels and cohorts: filters that do narrow the report."""
FORM_KEYS = ("email", "password", "csrf_token", "body", "confirm", "Body", "From", "MessageSid")
HEADER_NAMES = (
    "Accept",
    "Accept-Language",
    "User-Agent",
    "Referer",
    "Origin",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "Authorization",
    "X-Twilio-Signature",
    "Cookie",
    "If-None-Match",
    "If-Modified-Since",
    "Range",
    "List-Unsubscribe",
)
RAW_QUERIES = ("%", "%zz", "a=%ff%fe", "a=%00", "&&==&", "a=1&a=2&a=3", "next=//evil.example")
RAW_CONTENT_TYPES = (
    "multipart/form-data",
    "multipart/form-data; boundary=x",
    "application/json",
    "application/x-www-form-urlencoded; charset=latin-1",
    "text/plain",
    "application/xml",
)
SWEEP = ("' OR 1=1 --", "\x00\u202e🙂=HYPERLINK(1)", "x" * 1601)
"""Sent to every route by every caller before the random search, so none is missed."""
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \"/[^\"]+\.py\", line \d+")
_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")


@dataclass
class World:
    """The stored data the fuzzer aims at: real tokens, keys, ids and numbers."""

    programme_key: str
    survey_tokens: list[str]
    subject_ids: list[int]
    mobiles: list[str]
    report_tokens: list[str] = field(default_factory=list)
    api_token: str = ""


def _answer_all(session, invitation: Invitation, value: int = 3) -> None:
    for item in definition_of(invitation.instrument_version).items:
        record_answer(session, invitation, item.id, value, "web", NOW)
    complete_response(session, invitation, NOW)


def _build_world(session, factory) -> World:
    """One home, a manager and seven care workers, a wave with all three instruments open,
    most of it answered (so the reports have figures), and an admin with an API token."""
    home = factory.home("Willow Court")
    manager = factory.person(home, role="manager")
    workers = [factory.person(home) for _ in range(7)]
    programme, wave = factory.programme(
        [home], ASKS, opens=NOW - dt.timedelta(days=1), closes=NOW + dt.timedelta(days=7)
    )
    open_wave(session, wave, NOW)
    invitations = session.scalars(select(Invitation).order_by(Invitation.id)).all()
    for invitation in invitations[: len(invitations) - 3]:
        _answer_all(session, invitation)
    admin = create_account(session, "admin@example.org", PASSWORD, "admin")
    api_token = issue_token(session, admin)[1]
    session.commit()
    open_tokens = [i.token for i in invitations if i.status != "completed"]
    return World(
        programme_key=programme.key,
        survey_tokens=open_tokens + [invitations[0].token],
        subject_ids=[manager.id, workers[0].id],
        mobiles=[w.mobile for w in workers],
        api_token=api_token,
    )


def _rules(app: Flask) -> list[Any]:
    """Every route of the app, static files included."""
    return sorted(app.url_map.iter_rules(), key=lambda r: r.rule)


def _segment(world: World, converter: str | None, name: str) -> st.SearchStrategy[str]:
    """A path segment for one URL argument: a real value most routes will act on, or not."""
    if converter == "int":
        known = world.subject_ids + [1, 2, 3]
        return st.one_of(st.sampled_from(known), st.integers(min_value=-5, max_value=10**30)).map(
            str
        )
    real: list[str] = {
        "token": world.survey_tokens + world.report_tokens,
        "key": [world.programme_key, "other"],
        "table": list(TABLE_TITLES),
        "name": ["response_rates", "morale"],
        "number": world.mobiles + ["+447700900999"],
    }.get(name, [])
    hostile = hostile_text().map(lambda s: quote(s, safe=""))
    return st.one_of(st.sampled_from(real), hostile) if real else hostile


@st.composite
def _request(draw, world: World, rules: list[Any]) -> dict[str, Any]:
    rule = draw(st.sampled_from(rules))
    own = sorted(rule.methods - {"HEAD", "OPTIONS"})
    method = draw(st.one_of(st.sampled_from(own), st.sampled_from(METHODS)))
    path = _ARGUMENT.sub(lambda m: draw(_segment(world, m["converter"], m["name"])), rule.rule)
    query = draw(
        st.one_of(
            st.dictionaries(
                st.one_of(st.sampled_from(QUERY_KEYS), hostile_text()),
                st.one_of(st.sampled_from(QUERY_VALUES), hostile_text()),
                max_size=4,
            ).map(lambda d: urlencode(d)),
            st.sampled_from(RAW_QUERIES),
        )
    )
    headers = draw(
        st.dictionaries(st.sampled_from(HEADER_NAMES), hostile_text(200), max_size=4).map(
            lambda d: {k: as_header_value(v) for k, v in d.items()}
        )
    )
    request: dict[str, Any] = {"method": method, "path": path, "query_string": query}
    request["rule"] = rule.rule
    if draw(st.booleans()):
        keys = st.one_of(st.sampled_from(FORM_KEYS), hostile_text())
        request["data"] = draw(st.dictionaries(keys, hostile_text(), max_size=6))
        request["with_csrf"] = draw(st.booleans())
    else:
        request["data"] = draw(st.binary(max_size=300))
        request["content_type"] = draw(st.sampled_from(RAW_CONTENT_TYPES))
    request["headers"] = headers
    return request


def _twilio_app(database_url: str, tmp_path) -> Flask:
    """A deployment with Twilio and SMTP configured (no development phone or mailbox)."""
    return make_app(
        database_url,
        tmp_path,
        **twilio_settings(),
        SMTP_HOST="127.0.0.1",
        SMTP_PORT="9",
        MAIL_FROM="surveys@carepulse.example.org",
    )


@dataclass
class Caller:
    """One kind of caller: a client with its own cookies, and what it may add to requests."""

    client: FlaskClient
    csrf: str = ""
    bearer: str = ""


def _callers(app: Flask, twilio_app: Flask, world: World) -> dict[str, Caller]:
    stranger = Caller(app.test_client())
    stranger.csrf = csrf_token(stranger.client.get("/login").get_data(as_text=True))
    respondent = Caller(app.test_client())
    started = respondent.client.get(f"/s/{world.survey_tokens[0]}", follow_redirects=True)
    assert started.status_code == 200, started.get_data(as_text=True)
    page = respondent.client.get("/survey/q/1").get_data(as_text=True)
    respondent.csrf = csrf_token(page)
    # The admin's requests carry no CSRF token: with it, a fuzzed POST /logout would end
    # the session for the rest.
    admin = Caller(app.test_client(), bearer=world.api_token)
    assert sign_in(admin.client, "admin@example.org").status_code == 303
    return {
        "stranger": stranger,
        "respondent": respondent,
        "admin": admin,
        "twilio": Caller(twilio_app.test_client()),
    }


@pytest.mark.slow
def test_no_request_to_any_route_gets_a_server_error(app, session, factory, database_url, tmp_path):
    world = _build_world(session, factory)
    with app.app_context():
        world.report_tokens = [report_token(world.programme_key, world.subject_ids[0])]
    twilio_app = _twilio_app(database_url, tmp_path)
    callers = _callers(app, twilio_app, world)
    rules = {name: _rules(app) for name in ("stranger", "respondent", "admin")}
    rules["twilio"] = _rules(twilio_app)
    assert {r.rule for r in rules["twilio"]} >= {"/twilio/sms", "/twilio/status"}
    for who, caller in callers.items():
        for rule in rules[who]:
            for sample in SWEEP:
                _sweep(caller, who, rule, sample)
    seen: set[str] = set()

    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data(), who=st.sampled_from(sorted(callers)))
    def fuzz(data, who):
        caller = callers[who]
        request = data.draw(_request(world, rules[who]))
        form = request["data"]
        if isinstance(form, dict) and request.pop("with_csrf") and caller.csrf:
            form["csrf_token"] = caller.csrf
        headers, rule = request.pop("headers"), request.pop("rule")
        if caller.bearer and request["path"].startswith("/api/") and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {caller.bearer}"
        _send(caller, who, headers=headers, **request)
        seen.add(rule)

    fuzz()
    # The stored data is still there and still readable after the onslaught.
    session.rollback()
    assert inspect(session.get_bind()).has_table("people")
    assert session.scalars(select(Invitation)).first() is not None
    assert len(seen) > len(rules["stranger"]) // 2  # the search did spread over the routes


def _send(caller: Caller, who: str, **request: Any) -> None:
    """Send one request and check the answer: below 500, no traceback, webhooks refused."""
    response = caller.client.open(**request)
    body = response.get_data().decode("utf-8", "replace")  # charts and workbooks are binary
    assert response.status_code < 500, (who, request, response.status_code, body[:2000])
    assert not TRACEBACK.search(body), (who, request, body[:2000])
    if who == "twilio" and request["path"] in ("/twilio/sms", "/twilio/status"):
        # No valid signature can come out of the fuzzer: every webhook is refused.
        assert response.status_code == (403 if request["method"] == "POST" else 405)


def _sweep(caller: Caller, who: str, rule: Any, sample: str) -> None:
    """Every argument, query parameter, form field and header of one request set to `sample`."""
    path = _ARGUMENT.sub(lambda m: quote(sample, safe=""), rule.rule)
    query = urlencode({k: sample for k in QUERY_KEYS})
    headers = {k: as_header_value(sample) for k in HEADER_NAMES if k != "Cookie"}
    for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
        form = {k: sample for k in FORM_KEYS if k != "csrf_token"}
        if caller.csrf:
            form["csrf_token"] = caller.csrf
        _send(caller, who, method=method, path=path, query_string=query, data=form, headers=headers)


def test_the_same_wave_before_and_after_is_refused_not_a_server_error(
    app, session, factory, runner
):
    """Found by the API fuzzing: `pre` and `post` naming one wave crashed the report."""
    world = _build_world(session, factory)
    same = {"pre": "baseline", "post": "baseline"}
    api = app.test_client().get(
        f"/api/v1/programmes/{world.programme_key}/report",
        query_string=same,
        headers={"Authorization": f"Bearer {world.api_token}"},
    )
    assert api.status_code == 400 and "baseline" in api.get_json()["error"]
    admin = _callers(app, app, world)["admin"].client
    page = admin.get(f"/dashboard/{world.programme_key}/", query_string=same)
    assert page.status_code == 400
    args = ["report", "--programme", world.programme_key, "--pre", "baseline", "--post", "baseline"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1 and result.output.startswith("Error:"), result.output
