"""The evaluator dashboard, the JSON API and the managers' 360 reports: who may open what,
that they show the same tables, and that nothing personal or small leaks through them."""

from __future__ import annotations

import csv
import io
import re

import pytest
import yaml
from openpyxl import load_workbook
from sqlalchemy import select

from bot.demo import run_cycle
from bot.outbound import Outbound
from bot.transports import DevMailbox, DevPhone
from reports.frames import subjects_rated
from reports.service import TABLE_TITLES
from storage.accounts import create_account, issue_token
from storage.models import Person, Programme, utcnow
from tests.support.web import PASSWORD, sign_in

KEY = "nwl-leadership-2027"


@pytest.fixture
def demo(app, session):
    """The demo programme run from baseline to end, and an account per role."""
    run_cycle(session, Outbound(app.config["CAREPULSE"], DevPhone(), DevMailbox()), utcnow())
    session.add(Programme(key="other", name="Another programme"))
    session.flush()
    accounts = {
        "admin": create_account(session, "admin@example.org", PASSWORD, "admin"),
        "lead": create_account(
            session, "lead@example.org", PASSWORD, "programme_lead", programme_keys=[KEY]
        ),
        "evaluator": create_account(
            session, "eval@example.org", PASSWORD, "evaluator", programme_keys=[KEY]
        ),
        "outsider": create_account(
            session, "out@example.org", PASSWORD, "evaluator", programme_keys=["other"]
        ),
    }
    tokens = {role: issue_token(session, account)[1] for role, account in accounts.items()}
    session.commit()
    return tokens


def _api(client, path: str, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(f"/api/v1{path}", headers=headers)


def _names_and_contacts(session) -> list[str]:
    people = session.scalars(select(Person)).all()
    return (
        [p.full_name for p in people]
        + [p.email for p in people if p.email]
        + [p.mobile for p in people if p.mobile]
    )


# --- the API ---------------------------------------------------------------------------


def _api_scope(client, demo):
    assert _api(client, "/programmes").status_code == 401
    assert _api(client, "/programmes", "cp_nonsense_token").status_code == 401
    listed = _api(client, "/programmes", demo["evaluator"]).get_json()["programmes"]
    assert [p["key"] for p in listed] == [KEY]
    assert [w["key"] for w in listed[0]["waves"]] == ["baseline", "end"]
    outsider = _api(client, f"/programmes/{KEY}/report", demo["outsider"])
    assert outsider.status_code == 404 and outsider.get_json()["error"]
    admin = _api(client, "/programmes", demo["admin"]).get_json()["programmes"]
    assert {p["key"] for p in admin} == {KEY, "other"}
    return [p["key"] for p in listed]


def _api_tables(client, session, demo):
    response = _api(client, f"/programmes/{KEY}/report", demo["evaluator"])
    assert response.status_code == 200
    body = response.get_json()
    assert list(body["tables"]) == [
        "response_rates",
        "response_rates_by_home",
        "response_rates_by_role",
        "response_rates_by_channel",
        "response_rates_detail",
        "prepost",
        "reliability",
        "three_sixty",
        "morale_by_home",
        "morale_by_cohort",
        "pulse",
    ]
    assert (body["pre"], body["post"], body["anonymity_threshold"]) == ("baseline", "end", 5)
    text = response.get_data(as_text=True)
    for personal in _names_and_contacts(session):
        assert personal not in text
    # The three managers' self-reports are fewer than 5: every figure is withheld.
    rows = body["tables"]["prepost"]["rows"]
    managers = [r for r in rows if r["instrument"] == "manager_self_report"]
    assert managers and all(r["mean_diff"] == "suppressed" for r in managers)


def _api_errors(client, demo):
    token = demo["evaluator"]
    unknown_table = _api(client, f"/programmes/{KEY}/tables/salaries", token)
    assert unknown_table.status_code == 404 and "salaries" in unknown_table.get_json()["error"]
    bad_wave = _api(client, f"/programmes/{KEY}/report?pre=midway", token)
    assert bad_wave.status_code == 400 and "midway" in bad_wave.get_json()["error"]
    typo = _api(client, f"/programmes/{KEY}/report?hmoe=Willow+Court", token)
    assert typo.status_code == 400 and "hmoe" in typo.get_json()["error"]
    assert _api(client, "/nothing-here", token).get_json()["status"] == 404


def _api_filters(client, demo):
    token = demo["evaluator"]
    # Managers: three people. Narrowing to them, or to everyone else (whose difference
    # from the whole programme is the same three), must both be refused.
    managers = _api(client, f"/programmes/{KEY}/report?role=manager", token)
    assert managers.status_code == 403 and "fewer than 5" in managers.get_json()["error"]
    home = _api(client, f"/programmes/{KEY}/tables/prepost?home=Willow+Court", token)
    assert home.status_code == 200
    assert home.get_json()["filters"] == {"home": "Willow Court"}


def test_the_openapi_file_describes_exactly_the_api_routes(app, client):
    spec = yaml.safe_load(client.get("/api/v1/openapi.yaml").get_data(as_text=True))
    assert spec["openapi"].startswith("3.1")
    described = {path for path in spec["paths"]}
    served = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule).removeprefix("/api/v1")
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/")
    }
    assert described == served
    tables = spec["paths"]["/programmes/{key}/tables/{table}"]["get"]["parameters"][1]
    from reports.service import TABLE_TITLES

    assert tables["schema"]["enum"] == list(TABLE_TITLES)


# --- the dashboard ---------------------------------------------------------------------


def _dashboard_signed_in(client, demo):
    response = client.get(f"/dashboard/{KEY}/")
    assert response.status_code in (302, 303) and "/login" in response.headers["Location"]


def _dashboard_same_figures(client, demo):
    _signed_in(client, "eval@example.org")
    page = client.get(f"/dashboard/{KEY}/").get_data(as_text=True)
    api = _api(client, f"/programmes/{KEY}/tables/response_rates", demo["evaluator"]).get_json()
    for row in api["tables"]["response_rates"]["rows"]:
        if row["invited"] != "suppressed":
            assert (
                f"<td>{row['wave']}</td><td>{row['instrument']}</td><td>{row['invited']}</td>"
                in page
            )
    assert 'class="suppressed"' in page
    csv_text = client.get(f"/dashboard/{KEY}/tables/response_rates.csv").get_data(as_text=True)
    first = api["tables"]["response_rates"]["rows"][0]
    assert f'"{first["wave"]}","{first["instrument"]}",{first["invited"]}' in csv_text


def _dashboard_downloads(client, demo):
    _signed_in(client, "eval@example.org")
    page = client.get(f"/dashboard/{KEY}/").get_data(as_text=True)
    charts = re.findall(r'src="(/dashboard/[^"]+\.png[^"]*)"', page)
    assert len(charts) == 3
    for src in charts:
        image = client.get(src.replace("&amp;", "&"))
        assert image.status_code == 200 and image.data[:8] == b"\x89PNG\r\n\x1a\n"
    workbook = load_workbook(io.BytesIO(client.get(f"/dashboard/{KEY}/report.xlsx").data))
    assert workbook.sheetnames[0] == "About" and "prepost" in workbook.sheetnames
    return workbook.sheetnames


def _evaluator_refused(client, session, demo):
    _signed_in(client, "eval@example.org")
    subject = subjects_rated(session, KEY)[0]
    assert client.get(f"/dashboard/{KEY}/wide.csv").status_code == 403
    assert client.get(f"/dashboard/{KEY}/managers/").status_code == 403
    assert client.get(f"/dashboard/{KEY}/managers/{subject}").status_code == 403
    assert client.get("/dashboard/other/").status_code == 404


def _lead_wide_file(client, session, demo):
    _signed_in(client, "lead@example.org")
    response = client.get(f"/dashboard/{KEY}/wide.csv")
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    header = next(csv.reader(io.StringIO(text.removeprefix("\ufeff"))))
    assert header[:4] == ["pseudonym", "cohort", "wave", "instrument"]
    assert "staff_morale__morale" in header and "person_id" not in header
    for personal in _names_and_contacts(session):
        assert personal not in text
    return header


def _manager_reports(app, client, session, demo):
    subject = subjects_rated(session, KEY)[0]
    name = session.get(Person, subject).full_name
    _signed_in(client, "lead@example.org")
    page = client.get(f"/dashboard/{KEY}/managers/{subject}")
    assert page.status_code == 200 and name in page.get_data(as_text=True)

    from bot.manager_reports import report_token

    with app.test_request_context():
        token = report_token(KEY, subject)
    anonymous = app.test_client()
    own = anonymous.get(f"/my-360/{token}")
    assert own.status_code == 200 and name in own.get_data(as_text=True)
    assert "Confidential" in own.get_data(as_text=True)
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert anonymous.get(f"/my-360/{forged}").status_code == 404


# The demo cycle takes seconds to build, so each test below walks several checks over one.


def test_the_api_scope_tables_errors_and_filters(client, session, demo):
    """Tokens and scope; every table without names or contacts; JSON errors; filters."""
    assert _api_scope(client, demo) == [KEY]  # an evaluator sees their programme only
    _api_tables(client, session, demo)
    _api_errors(client, demo)
    _api_filters(client, demo)


def test_the_dashboard_shows_what_the_api_shows_with_its_charts_and_downloads(client, demo):
    """Sign-in first; the same figures as the API and the CSV; PNG charts; the workbook."""
    _dashboard_signed_in(client, demo)
    _dashboard_same_figures(client, demo)
    sheets = _dashboard_downloads(client, demo)
    assert sheets[0] == "About" and set(TABLE_TITLES) <= {s.removesuffix(" (2)") for s in sheets}


def test_leads_open_the_analysis_file_and_manager_reports_evaluators_do_not(app, session, demo):
    """Evaluators are refused; the lead's file has no names; managers' reports by role/link."""
    _evaluator_refused(app.test_client(), session, demo)
    header = _lead_wide_file(app.test_client(), session, demo)
    assert header[:2] == ["pseudonym", "cohort"] and "person_id" not in header
    _manager_reports(app, app.test_client(), session, demo)


def test_a_filter_naming_nothing_and_the_same_wave_twice_are_clear_errors(client, factory):
    from storage.accounts import create_account as make

    home = factory.home("Willow Court")
    factory.person(home)
    programme, _ = factory.programme([home], [("staff_morale", {"roles": ["care_worker"]}, "sms")])
    from surveys.invitations import open_wave

    open_wave(
        factory.session, programme.cohorts[0].waves[0], programme.cohorts[0].waves[0].opens_at
    )
    token = issue_token(
        factory.session,
        make(
            factory.session, "e@example.org", PASSWORD, "evaluator", programme_keys=[programme.key]
        ),
    )[1]
    factory.session.commit()
    typo = _api(client, f"/programmes/{programme.key}/report?home=Wilow+Court", token)
    assert typo.status_code == 400
    assert "Wilow Court" in typo.get_json()["error"] and "Willow Court" in typo.get_json()["error"]
    same = _api(client, f"/programmes/{programme.key}/report?pre=baseline&post=baseline", token)
    assert same.status_code == 400 and "two different waves" in same.get_json()["error"]


def _signed_in(client, email: str) -> None:
    assert sign_in(client, email).status_code == 303


def test_api_pulls_share_one_build_and_each_is_audited(app, client, session, demo):
    from bot.dashboard import report_cache
    from storage.models import AuditEvent

    def builds() -> int:
        with app.app_context():
            return report_cache().builds

    token = demo["evaluator"]
    before = builds()
    first = _api(client, f"/programmes/{KEY}/report", token).get_json()
    table = _api(client, f"/programmes/{KEY}/tables/prepost", token).get_json()
    assert builds() == before + 1  # the table came from the same build
    assert table["tables"]["prepost"] == first["tables"]["prepost"]
    pulls = session.scalars(select(AuditEvent).where(AuditEvent.action == "api_pull")).all()
    assert len(pulls) == 2  # reused or not, every pull is in the audit log
