"""The evaluator dashboard and a manager's 360 report in real Chromium: signing in, the
report page with its charts, a refused filter, and what axe-core finds on each page."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.demo import run_cycle
from bot.outbound import Outbound
from bot.transports import DevMailbox, DevPhone
from reports.frames import subjects_rated
from storage.accounts import create_account
from storage.models import Person, Programme, utcnow
from tests.support import browser as support
from tests.support.browser import SERIOUS, axe_report, axe_scan, expect, new_page, screenshot
from tests.support.web import PASSWORD

pytestmark = pytest.mark.browser

browser = support.browser
live_site = support.live_site

KEY = "nwl-leadership-2027"


def _sign_in(page, live_site, email: str) -> None:
    page.goto(live_site(f"/dashboard/{KEY}/"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Sign in")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_an_evaluator_and_a_lead_use_the_reports(browser, live_site, session):
    settings = live_site.app.config["CAREPULSE"]
    run_cycle(session, Outbound(settings, DevPhone(), DevMailbox()), utcnow())
    create_account(session, "eval@example.org", PASSWORD, "evaluator", programme_keys=[KEY])
    create_account(session, "lead@example.org", PASSWORD, "programme_lead", programme_keys=[KEY])
    session.commit()
    subject = subjects_rated(session, KEY)[0]
    manager = session.scalar(select(Person).where(Person.id == subject)).full_name
    programme_name = session.scalar(select(Programme.name).where(Programme.key == KEY))

    page = new_page(browser, viewport={"width": 1024, "height": 900})
    findings: dict[str, list[dict]] = {}

    def scan(name: str) -> None:
        screenshot(page, f"reports-{len(findings) + 1:02d}-{name}")
        findings[name] = axe_scan(page)

    _sign_in(page, live_site, "eval@example.org")
    expect(page.get_by_role("heading", level=1)).to_have_text(programme_name)
    prepost = page.locator("#d-prepost")
    prepost.locator("summary").click()  # the longer tables start folded
    expect(prepost.get_by_role("table")).to_be_visible()
    charts = page.locator("figure.chart img")
    assert charts.count() == 3
    for n in range(charts.count()):
        image = charts.nth(n)
        image.scroll_into_view_if_needed()  # the charts load lazily
        handle = image.element_handle()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=handle)
    assert page.locator("td.suppressed").count() > 0
    scan("dashboard")

    page.get_by_role("textbox", name="Role", exact=True).fill("manager")
    page.get_by_role("button", name="Show").click()
    expect(page.locator(".error-summary")).to_contain_text("fewer than 5 people")
    scan("refused-filter")
    page.context.close()

    page = new_page(browser, viewport={"width": 1024, "height": 900})
    _sign_in(page, live_site, "lead@example.org")
    page.goto(live_site(f"/dashboard/{KEY}/managers/"))
    page.get_by_role("link", name=manager).click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"360 appraisal: {manager}")
    scan("manager-report")
    page.context.close()

    serious = {
        name: [v for v in found if v["impact"] in SERIOUS] for name, found in findings.items()
    }
    report = "\n".join(f"{name}:\n{axe_report(found)}" for name, found in findings.items() if found)
    print(report or "axe-core: no violations on the report pages")
    assert not any(serious.values()), f"axe-core violations (all of them):\n{report}"
