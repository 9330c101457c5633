"""The web survey in a real browser: Chromium, driven as a care worker would use it.

What the test client cannot show: that tapping a label picks the answer on a phone, that a
keyboard alone gets through, that focus is visible, that the error summary's link moves
focus to the radios, that nothing scrolls sideways at 320 px, and what axe-core finds on
every page. The app is served on 127.0.0.1 (no network is used); screenshots of every
page are kept under test-artifacts/screenshots/.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import func, select

from storage.models import Invitation, Response
from surveys.invitations import open_wave
from tests.support import browser as support
from tests.support.browser import (
    PHONE,
    SERIOUS,
    axe_report,
    axe_scan,
    docs_screenshot,
    expect,
    new_page,
    press,
    screenshot,
)
from tests.support.web_survey import ITEMS_360, STAFF, open_morale, web_answers

pytestmark = pytest.mark.browser

# The browser fixtures live in tests/support (the project keeps one conftest.py): a module
# uses a fixture by having it under the fixture's name.
browser = support.browser
live_site = support.live_site

NOW = dt.datetime.now(dt.UTC)
AGREEMENT = {
    "1": "1 – Strongly disagree",
    "2": "2 – Disagree",
    "3": "3 – Neither agree nor disagree",
    "4": "4 – Agree",
    "5": "5 – Strongly agree",
    "skip": "Prefer not to say",
}


# --- set-up --------------------------------------------------------------------------------


def _open(session, wave):
    open_wave(session, wave, NOW)
    session.commit()


def _appraisal(session, factory, raters=None, channel="sms"):
    """An open 360 of Margaret Okafor (manager of Willow Court); invitations by relation."""
    home = factory.home("Willow Court")
    factory.person(home, role="manager", given_name="Margaret", family_name="Okafor")
    factory.person(home, role="care_worker", given_name="Amara", family_name="Mensah")
    factory.person(home, role="proprietor", given_name="Priya", family_name="Shah")
    raters = raters or {"staff": ["care_worker"]}
    _, wave = factory.programme(
        [home],
        [("appraisal_360", {"subject_role": "manager", "raters": raters}, channel)],
        opens=NOW - dt.timedelta(hours=1),
        closes=NOW + dt.timedelta(days=14),
    )
    _open(session, wave)
    return {inv.rater_relation: inv for inv in session.scalars(select(Invitation))}


# --- driving the pages ---------------------------------------------------------------------


def _at(page, path: str) -> None:
    expect(page).to_have_url(re.compile(re.escape(path) + "$"))


def _choose(page, label: str) -> None:
    """Tap (on a touch screen) or click an answer's label, as a person does."""
    exactly = re.compile(f"^{re.escape(label)}$")
    target = page.locator("label.radios__label").filter(has_text=exactly)
    expect(target).to_have_count(1)
    press(target)
    expect(page.get_by_label(label, exact=True)).to_be_checked()


def _press(page, name: str, role: str = "button") -> None:
    press(page.get_by_role(role, name=name))


def _answer(page, number: int, value: str, total: int = 11, shot: str | None = None) -> None:
    """On question `number`: choose `value`, continue."""
    _at(page, f"/survey/q/{number}")
    expect(page.locator(".progress")).to_contain_text(f"Question {number} of {total}")
    _choose(page, AGREEMENT[value])
    if shot:
        screenshot(page, shot)
    _press(page, "Continue")


def _focused(page) -> dict:
    """The focused element and how its focus is drawn."""
    return page.evaluate(
        """() => {
            const e = document.activeElement, s = getComputedStyle(e);
            return {tag: e.tagName.toLowerCase(), id: e.id, text: e.innerText || e.value || '',
                    outlineStyle: s.outlineStyle, outlineWidth: s.outlineWidth,
                    outlineColor: s.outlineColor, boxShadow: s.boxShadow,
                    background: s.backgroundColor};
        }"""
    )


def _assert_focus_visible(focus: dict) -> None:
    assert focus["tag"] != "body", "nothing has focus"
    # GOV.UK's focus style: an outline (transparent on links and buttons, so that it shows
    # in Windows' high-contrast mode) plus a yellow fill or ring drawn by box-shadow.
    assert focus["outlineStyle"] != "none" and focus["outlineWidth"] != "0px", focus
    transparent = focus["outlineColor"] in ("transparent", "rgba(0, 0, 0, 0)")
    assert not transparent or focus["boxShadow"] != "none", focus


def _tab_to(page, wanted: str, limit: int = 12) -> dict:
    """Press Tab until the focused element's text (or id) contains `wanted`; every element
    passed on the way must show that it has focus."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        focus = _focused(page)
        _assert_focus_visible(focus)
        if wanted in focus["text"] or wanted == focus["id"]:
            return focus
    raise AssertionError(f"{wanted!r} not reached with {limit} presses of Tab")


# --- a: a care worker on a phone -----------------------------------------------------------


def test_a_care_worker_answers_the_360_on_a_phone_stops_and_resumes(
    browser,
    live_site,
    session,
    factory,
):
    invitation = _appraisal(session, factory)["staff"]
    token, invitation_id = invitation.token, invitation.id
    answers = ["4", "5", "skip", "3", "2", "4", "5", "1", "3", "4", "skip"]

    page = new_page(browser, **PHONE)
    page.goto(live_site(f"/s/{token}"))
    _at(page, "/survey")  # the token is swapped for a session and leaves the address bar
    expect(page.get_by_role("heading", level=1)).to_have_text("How the care home manager leads")
    expect(page.get_by_text("About Margaret Okafor, Willow Court")).to_be_visible()
    expect(page.get_by_text("Your answers are anonymous.")).to_be_visible()
    expect(page.get_by_text("only reported when at least 5 staff have answered")).to_be_visible()
    screenshot(page, "phone-01-start")
    _press(page, "Start now")

    # About half, then the phone is put away (the browser context, cookies and all, goes).
    for number in range(1, 6):
        _answer(page, number, answers[number - 1], shot=f"phone-q{number:02d}")
    _at(page, "/survey/q/6")
    page.context.close()
    assert web_answers(session, invitation_id) == {
        item: None if a == "skip" else int(a)
        for item, a in zip(ITEMS_360[:5], answers[:5], strict=True)
    }

    # Later, from the link again, in a new browser: Continue goes to the first unanswered one.
    page = new_page(browser, **PHONE)
    page.goto(live_site(f"/s/{token}"))
    _at(page, "/survey")
    expect(page.get_by_text("You have answered 5 of 11 questions.")).to_be_visible()
    screenshot(page, "phone-02-start-again")
    _press(page, "Continue")
    _at(page, "/survey/q/6")
    for number in range(6, 12):
        _answer(page, number, answers[number - 1], shot=f"phone-q{number:02d}")

    _at(page, "/survey/check")
    expect(page.get_by_role("heading", level=1)).to_have_text("Check your answers")
    values = page.locator(".summary-list__value")
    expect(values).to_have_text([AGREEMENT[a] for a in answers])
    screenshot(page, "phone-03-check")

    # Change question 4 from the check page: back to the check page, not on to question 5.
    _press(page, "Change your answer to question 4", role="link")
    _at(page, "/survey/q/4?change=1")
    expect(page.get_by_label(AGREEMENT["3"], exact=True)).to_be_checked()
    screenshot(page, "phone-04-change")
    docs_screenshot(page, "survey-question-phone")  # an answer shown chosen, before a tap
    _choose(page, AGREEMENT["1"])
    _press(page, "Continue")
    answers[3] = "1"
    _at(page, "/survey/check")
    expect(values).to_have_text([AGREEMENT[a] for a in answers])
    docs_screenshot(page, "survey-check-phone", full_page=False)  # what the phone shows

    _press(page, "Send answers")
    _at(page, "/survey/done")
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Thank you – your answers have been sent"
    )
    screenshot(page, "phone-05-done")
    page.context.close()

    assert web_answers(session, invitation_id) == {
        item: None if a == "skip" else int(a) for item, a in zip(ITEMS_360, answers, strict=True)
    }
    assert session.scalar(select(func.count()).select_from(Response)) == 1
    response = session.scalars(select(Response)).one()
    assert response.invitation_id == invitation_id and response.completed_at is not None
    assert session.get(Invitation, invitation_id).status == "completed"


# --- b: keyboard only ----------------------------------------------------------------------


def test_the_morale_survey_can_be_answered_with_the_keyboard_alone(
    browser,
    live_site,
    session,
    factory,
):
    invitation = open_morale(session, factory, NOW)
    invitation_id = invitation.id
    page = new_page(browser, viewport={"width": 1024, "height": 768})
    page.goto(live_site(f"/s/{invitation.token}"))
    _at(page, "/survey")

    skip = _tab_to(page, "Skip to main content")
    assert skip["background"] != "rgba(0, 0, 0, 0)"  # the skip link shows when focused
    _tab_to(page, "Start now")
    page.keyboard.press("Enter")

    _at(page, "/survey/q/1")
    radio = _tab_to(page, "morale-1")  # Tab enters the radio group at its first radio
    assert radio["tag"] == "input"
    page.keyboard.press("Space")
    expect(page.locator("#morale-1")).to_be_checked()
    _tab_to(page, "Continue")
    page.keyboard.press("Enter")

    _at(page, "/survey/check")
    expect(page.locator(".summary-list__value")).to_have_text(["1 – Very low"])
    _tab_to(page, "Send answers")
    page.keyboard.press("Enter")
    _at(page, "/survey/done")
    expect(page.get_by_role("heading", level=1)).to_contain_text("your answers have been sent")
    page.context.close()

    assert web_answers(session, invitation_id) == {"morale": 1}
    assert session.get(Invitation, invitation_id).status == "completed"


# --- c: the error summary ------------------------------------------------------------------


def test_continuing_without_an_answer_shows_an_error_summary_that_leads_to_the_radios(
    browser,
    live_site,
    session,
    factory,
):
    invitation = _appraisal(session, factory)["staff"]
    invitation_id = invitation.id
    page = new_page(browser, **PHONE)
    page.goto(live_site(f"/s/{invitation.token}"))
    _press(page, "Start now")
    _at(page, "/survey/q/1")
    _press(page, "Continue")

    summary = page.locator(".error-summary")
    expect(summary).to_be_visible()
    expect(page).to_have_title(re.compile("^Error: Question 1 of 11"))
    is_alert = summary.get_attribute("role") == "alert"
    has_focus = summary.evaluate("e => e === document.activeElement")
    assert is_alert or has_focus
    expect(page.get_by_role("alert")).to_contain_text("There is a problem")
    expect(page.locator("#residents_involvement-error")).to_be_visible()

    link = summary.get_by_role("link", name="Select an answer, or select ‘Prefer not to say’")
    link.click()
    focus = _focused(page)
    assert focus["id"] == "residents_involvement-1", focus
    _assert_focus_visible(focus)
    expect(page.locator("#residents_involvement-1")).to_be_in_viewport()
    assert web_answers(session, invitation_id) == {}

    _choose(page, AGREEMENT["skip"])
    _press(page, "Continue")
    _at(page, "/survey/q/2")
    page.context.close()
    assert web_answers(session, invitation_id) == {"residents_involvement": None}


# --- d: 320 px wide ------------------------------------------------------------------------


def test_no_page_scrolls_sideways_at_320_pixels(
    browser,
    live_site,
    session,
    factory,
):
    invitation = _appraisal(session, factory)["staff"]
    page = new_page(browser, viewport={"width": 320, "height": 568}, is_mobile=True, has_touch=True)
    seen = []

    def fits(label: str) -> None:
        page.wait_for_load_state()
        width = page.evaluate("document.documentElement.scrollWidth")
        seen.append(label)
        assert width <= 320, f"{label} ({page.url}) is {width}px wide at 320px"

    page.goto(live_site("/s/" + "A" * 32))
    fits("unknown link")
    page.goto(live_site(f"/s/{invitation.token}"))
    fits("start")
    _press(page, "Start now")
    _at(page, "/survey/q/1")
    _press(page, "Continue")
    expect(page.locator(".error-summary")).to_be_visible()
    fits("question 1 in error")
    for number in range(1, 12):
        _at(page, f"/survey/q/{number}")
        fits(f"question {number}")
        _answer(page, number, "3" if number % 2 else "skip")
    _at(page, "/survey/check")
    fits("check your answers")
    _press(page, "Send answers")
    _at(page, "/survey/done")
    fits("confirmation")
    page.goto(live_site(f"/s/{invitation.token}"))
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "You have already answered this survey"
    )
    fits("already answered")
    page.context.close()
    assert len(seen) == 17


# --- e, f: axe-core on every page, and a screenshot of each --------------------------------


def test_axe_finds_nothing_serious_on_any_page(
    browser,
    live_site,
    session,
    factory,
):
    from bot.outbound import Outbound
    from bot.transports import DevMailbox, DevPhone

    # Texts on the development phone (the morale conversation), emails in its mailbox (a 360
    # sent by email), an expired and a completed invitation.
    home = factory.home("Willow Court", local_authority="Harrow", cqc_location_id="1-123456789")
    factory.person(home, role="manager", given_name="Margaret", family_name="Okafor")
    factory.person(home, role="care_worker", given_name="Amara", family_name="Mensah")
    factory.person(home, role="nurse", given_name="Bola", family_name="Ade")
    factory.person(home, role="proprietor", given_name="Priya", family_name="Shah")
    raters = {
        "self": ["manager"],
        "staff": ["care_worker", "nurse"],
        "line_manager": ["proprietor"],
    }
    _, wave = factory.programme(
        [home],
        [
            ("staff_morale", {"roles": STAFF}, "sms"),
            ("appraisal_360", {"subject_role": "manager", "raters": raters}, "email"),
        ],
        opens=NOW - dt.timedelta(hours=1),
        closes=NOW + dt.timedelta(days=14),
    )
    _open(session, wave)
    Outbound(live_site.app.config["CAREPULSE"], DevPhone(), DevMailbox()).send_pending(session)
    session.commit()
    by_key = {
        (inv.person.given_name, inv.rater_relation): inv
        for inv in session.scalars(select(Invitation))
    }
    staff, line = by_key[("Amara", "staff")], by_key[("Priya", "line_manager")]
    expired, completed = by_key[("Bola", "staff")], by_key[("Bola", None)]
    expired.status, completed.status = "expired", "completed"
    session.commit()
    tokens = {
        "staff": staff.token,
        "line": line.token,
        "expired": expired.token,
        "completed": completed.token,
    }

    page = new_page(browser, **PHONE)
    findings: dict[str, list[dict]] = {}

    def scan(name: str, heading: str) -> None:
        expect(page.get_by_role("heading", level=1)).to_contain_text(heading)
        screenshot(page, f"page-{len(findings) + 1:02d}-{name}")
        findings[f"{name} ({page.url.removeprefix(live_site.url)})"] = axe_scan(page)

    page.goto(live_site("/"))  # the start page is for leads: a visitor is asked to sign in
    scan("sign-in", "Sign in")
    page.goto(live_site("/dev/phone"))
    scan("dev-phone", "Development phone")
    page.goto(live_site("/dev/mailbox"))
    scan("dev-mailbox", "Development mailbox")
    page.goto(live_site("/s/" + "A" * 32))
    scan("unknown-link", "This link is not recognised")
    page.goto(live_site(f"/s/{tokens['expired']}"))
    scan("expired-link", "This survey has closed")
    page.goto(live_site(f"/s/{tokens['completed']}"))
    scan("completed-link", "You have already answered")
    page.goto(live_site("/survey"))
    scan("no-session", "Open your survey link again")
    page.goto(live_site(f"/s/{tokens['line']}"))
    scan("start-line-manager", "How the care home manager leads")
    page.goto(live_site(f"/s/{tokens['staff']}"))
    scan("start-staff", "How the care home manager leads")
    _press(page, "Start now")
    scan("question", "My manager")
    _press(page, "Continue")
    expect(page.locator(".error-summary")).to_be_visible()
    scan("question-error", "My manager")
    _choose(page, AGREEMENT["4"])
    _press(page, "Continue")
    _at(page, "/survey/q/2")
    page.goto(live_site("/survey/check"))  # 10 questions left unanswered
    scan("check-answers", "Check your answers")
    _press(page, "Send answers")
    scan("confirmation", "Thank you")
    page.context.close()

    assert len(findings) == 13
    serious = {
        page_name: [v for v in violations if v["impact"] in SERIOUS]
        for page_name, violations in findings.items()
    }
    report = "\n".join(
        f"{page_name}:\n{axe_report(violations)}"
        for page_name, violations in findings.items()
        if violations
    )
    print(report or "axe-core: no violations on any page")
    assert not any(serious.values()), f"axe-core violations (all of them):\n{report}"
