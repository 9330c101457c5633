"""The web survey at `/s/<token>` and `/survey...`: what a person sees, and what is stored.

A link's token is exchanged for a session and never appears again; then a start page, one
question per page, check your answers and a confirmation (GOV.UK patterns), every POST
protected by the session's CSRF token.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest
from sqlalchemy import event, func, select

from storage.models import Answer, Invitation, Response
from surveys.invitations import open_wave
from tests.support.web import csrf_token, make_app
from tests.support.web_survey import ITEMS_360, open_morale, web_answers

NOW = dt.datetime.now(dt.UTC)
TITLE = "How the care home manager leads"


def _fresh(session):
    """End the test's transaction and forget loaded rows, to see what the app committed."""
    session.rollback()
    session.expire_all()


def _text(response) -> str:
    return response.get_data(as_text=True)


def _answer(client, number: int, item_id: str, value: str, query: str = ""):
    """Open question `number` like a browser, pick `value` and continue."""
    page = client.get(f"/survey/q/{number}{query}")
    assert page.status_code == 200, _text(page)
    return client.post(
        f"/survey/q/{number}{query}", data={"csrf_token": csrf_token(_text(page)), item_id: value}
    )


def _count(session, model) -> int:
    _fresh(session)
    return session.scalar(select(func.count()).select_from(model))


def _appraisal(session, factory, raters=None, settings=None, **wave):
    """A 360 of Margaret Okafor (manager of Willow Court), opened; returns invitations."""
    home = factory.home("Willow Court")
    factory.person(home, role="manager", given_name="Margaret", family_name="Okafor")
    factory.person(home, role="care_worker", given_name="Amara", family_name="Mensah")
    factory.person(home, role="nurse", given_name="Bola", family_name="Ade")
    factory.person(home, role="proprietor", given_name="Priya", family_name="Shah")
    raters = raters or {
        "self": ["manager"],
        "staff": ["care_worker"],
        "peer": ["nurse"],
        "line_manager": ["proprietor"],
    }
    programme, wave_row = factory.programme(
        [home],
        [("appraisal_360", {"subject_role": "manager", "raters": raters}, "sms")],
        **wave,
    )
    if settings is not None:
        programme.settings = settings
    open_wave(session, wave_row, NOW)
    session.commit()
    invitations = session.scalars(select(Invitation)).all()
    return {inv.rater_relation: inv for inv in invitations}, wave_row


# --- the link --------------------------------------------------------------------------


def test_the_token_is_exchanged_for_a_session_and_never_shown_again(client, session, factory):
    by_relation, _ = _appraisal(session, factory)
    invitation = by_relation["staff"]
    opened = client.get(f"/s/{invitation.token}")
    assert opened.status_code == 303
    assert opened.headers["Location"] == "/survey"
    cookie = opened.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # PUBLIC_BASE_URL is http in the suite
    assert invitation.token not in cookie
    with client.session_transaction() as flask_session:
        assert flask_session["survey_invitation"] == invitation.id
        assert len(flask_session["survey_csrf"]) >= 32
    start = client.get("/survey")
    assert start.status_code == 200
    assert invitation.token not in _text(start)
    question = client.get("/survey/q/1")
    assert invitation.token not in _text(question)
    # Opening the link changes nothing stored.
    _fresh(session)
    assert session.get(Invitation, invitation.id).status == "pending"
    assert _count(session, Response) == 0


def test_the_session_cookie_is_secure_when_served_over_https(engine, database_url, tmp_path):
    app = make_app(database_url, tmp_path, PUBLIC_BASE_URL="https://surveys.example.org")
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_HTTPONLY"] is True
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Lax"


def test_every_survey_response_is_private(client, session, factory):
    by_relation, _ = _appraisal(session, factory)
    paths = [f"/s/{by_relation['staff'].token}", "/survey", "/survey/q/1", "/survey/check"]
    paths += ["/survey/done", "/survey/q/99", "/s/" + "A" * 32, "/s/short"]
    for path in paths:
        response = client.get(path)
        assert response.headers["Cache-Control"] == "no-store", path
        assert response.headers["Referrer-Policy"] == "no-referrer", path
    other_browser = client.application.test_client().get("/survey")
    assert other_browser.headers["Cache-Control"] == "no-store"


def test_unknown_links_reveal_nothing(client, session, factory, app):
    by_relation, _ = _appraisal(session, factory, settings={"contact": "Jo on 020 7946 0000"})
    queries = []
    engine = app.extensions["carepulse.engine"]

    def count(conn, cursor, statement, *args):
        queries.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        for path in (
            "/s/not-a-real-token",
            "/s/" + "x" * 31,
            "/s/" + "x" * 33,
            "/s/" + "x" * 5000,
            "/s/" + "x" * 31 + "!",
            "/s/abc%00def",
            "/s/%F0%9F%99%82",
        ):
            response = client.get(path)
            assert response.status_code == 404, path
            assert "This link is not recognised" in _text(response)
        assert queries == []  # what cannot be a token is refused without asking the database
        unknown = client.get("/s/" + "A" * 32)
        assert [q for q in queries if "invitations" in q] != []
    finally:
        event.remove(engine, "before_cursor_execute", count)
    html = _text(unknown)
    assert unknown.status_code == 404
    assert "This link is not recognised" in html
    assert "contact your programme team" in html
    for secret in ("Margaret", "Okafor", "Willow Court", TITLE, "Jo on 020"):
        assert secret not in html
    assert "Set-Cookie" not in unknown.headers
    assert client.get("/survey").status_code == 403  # no session was given


def test_completed_and_expired_links_say_so_and_whom_to_contact(client, session, factory):
    settings = {"contact": "Jo Bloggs on 020 7946 0000"}
    by_relation, wave = _appraisal(session, factory, settings=settings)
    staff, peer, line = by_relation["staff"], by_relation["peer"], by_relation["line_manager"]
    staff.status, peer.status = "completed", "opted_out"
    session.commit()
    done = client.get(f"/s/{staff.token}")
    assert done.status_code == 200
    assert "You have already answered" in _text(done)
    assert "Jo Bloggs on 020 7946 0000" in _text(done)
    opted_out = client.get(f"/s/{peer.token}")
    assert opted_out.status_code == 410
    assert "This survey has closed" in _text(opted_out)
    assert "contact Jo Bloggs on 020 7946 0000" in _text(opted_out)
    for page in (done, opted_out):
        assert "Margaret" not in _text(page) and "Set-Cookie" not in page.headers
    wave.opens_at = NOW - dt.timedelta(days=2)
    wave.closes_at = NOW - dt.timedelta(minutes=1)
    session.commit()
    closed = client.get(f"/s/{line.token}")
    assert closed.status_code == 410
    assert "This survey has closed" in _text(closed)


def test_closed_page_without_a_programme_contact_names_the_programme_team(client, session, factory):
    invitation = open_morale(session, factory, NOW)
    invitation.status = "expired"
    session.commit()
    closed = client.get(f"/s/{invitation.token}")
    assert closed.status_code == 410
    assert "contact your programme team" in _text(closed)


# --- the start page --------------------------------------------------------------------


def test_start_page_for_staff_says_whom_it_is_about_and_that_it_is_anonymous(
    client, session, factory
):
    by_relation, _ = _appraisal(session, factory, settings={"min_raters": {"staff": 7}})
    page = client.get(f"/s/{by_relation['staff'].token}", follow_redirects=True)
    html = _text(page)
    assert page.status_code == 200
    assert f"<title>{TITLE} – carepulse</title>" in html
    assert html.count("<h1") == 1
    assert f'<h1 class="heading-xl">{TITLE}</h1>' in html
    assert "About Margaret Okafor, Willow Court" in html
    assert "11 questions" in html and "about 4 minutes" in html
    # The factory's wave closes at 09:00 UTC on 18 January 2027: GMT in London.
    assert "The survey closes at 9am on Monday 18 January 2027 (GMT)" in html
    assert "Your answers are anonymous" in html
    assert "only reported when at least 7 staff have answered" in html
    assert 'href="/survey/q/1"' in html and "Start now" in html
    assert 'lang="en"' in html and 'href="#main"' in html


def test_start_page_uses_the_default_group_minimums(client, session, factory):
    by_relation, _ = _appraisal(session, factory)
    staff = _text(client.get(f"/s/{by_relation['staff'].token}", follow_redirects=True))
    assert "only reported when at least 5 staff have answered" in staff
    peer = _text(client.get(f"/s/{by_relation['peer'].token}", follow_redirects=True))
    assert "only reported when at least 3 peers have answered" in peer


def test_line_manager_is_told_their_rating_is_shown_by_name(client, session, factory):
    by_relation, _ = _appraisal(session, factory)
    html = _text(client.get(f"/s/{by_relation['line_manager'].token}", follow_redirects=True))
    assert "About Margaret Okafor, Willow Court" in html
    assert "Your answers are not anonymous" in html
    assert "your rating is shown to Margaret Okafor with your name" in html
    assert "Your answers are anonymous" not in html


def test_self_rating_says_so_and_uses_i_phrasing(client, session, factory):
    by_relation, _ = _appraisal(session, factory)
    start = _text(client.get(f"/s/{by_relation['self'].token}", follow_redirects=True))
    assert "You are rating yourself" in start
    assert "About Margaret" not in start and "anonymous" not in start
    question = _text(client.get("/survey/q/1"))
    assert "I make sure residents are actively involved in decisions that affect them." in question
    assert "My manager" not in question

    staff = client.application.test_client()
    staff.get(f"/s/{by_relation['staff'].token}")
    question = _text(staff.get("/survey/q/1"))
    assert "My manager makes sure residents are actively involved" in question
    assert "about Margaret Okafor" in question


def test_start_page_shows_the_closing_time_in_the_programme_time_zone(client, session, factory):
    by_relation, _ = _appraisal(
        session,
        factory,
        opens=dt.datetime(2027, 6, 20, 8, tzinfo=dt.UTC),
        closes=dt.datetime(2027, 7, 1, 16, 30, tzinfo=dt.UTC),
    )
    html = _text(client.get(f"/s/{by_relation['staff'].token}", follow_redirects=True))
    assert "The survey closes at 5:30pm on Thursday 1 July 2027 (BST)" in html


# --- the questions ---------------------------------------------------------------------


def test_a_staff_member_answers_a_whole_360_page_by_page(client, session, factory, app):
    by_relation, _ = _appraisal(session, factory)
    invitation = by_relation["staff"]
    client.get(f"/s/{invitation.token}")
    answers = ["4", "5", "skip", "3", "2", "4", "5", "1", "3", "4", "skip"]

    page = client.get("/survey/q/3")
    html = _text(page)
    assert f"<title>Question 3 of 11 – {TITLE} – carepulse</title>" in html
    assert "Question 3 of 11" in html
    assert html.count("<h1") == 1
    assert re.search(r"<legend[^>]*>\s*<h1[^>]*>My manager congratulates staff", html)
    assert '<a href="/survey/q/2" class="back-link">Back</a>' in html
    assert "1 = Strongly disagree, 5 = Strongly agree" in html
    for value in ["1", "2", "3", "4", "5", "skip"]:
        assert f'id="staff_praise-{value}"' in html
        assert f'<label class="radios__label" for="staff_praise-{value}">' in html
    assert "Prefer not to say" in html and ">Continue</button>" in html
    first = _text(client.get("/survey/q/1"))
    assert '<a href="/survey" class="back-link">Back</a>' in first

    # The first five, then the person stops.
    for number in range(1, 6):
        saved = _answer(client, number, ITEMS_360[number - 1], answers[number - 1])
        assert saved.status_code == 303
        assert saved.headers["Location"] == f"/survey/q/{number + 1}"
    assert web_answers(session, invitation.id) == {
        item: (None if a == "skip" else int(a))
        for item, a in zip(ITEMS_360[:5], answers[:5], strict=True)
    }
    _fresh(session)
    assert session.get(Invitation, invitation.id).status == "started"

    # Later, on another device, from the same link: Continue at the first unanswered one.
    later = app.test_client()
    start = later.get(f"/s/{invitation.token}", follow_redirects=True)
    html = _text(start)
    assert "You have answered 5 of 11 questions" in html
    assert '<a href="/survey/q/6" role="button"' in html and "Continue" in html
    assert "Start now" not in html
    # An answer already given is shown selected when they go back to it.
    back = _text(later.get("/survey/q/2"))
    assert 'value="5" checked' in back
    assert 'value="skip" checked' in _text(later.get("/survey/q/3"))

    for number in range(6, 12):
        saved = _answer(later, number, ITEMS_360[number - 1], answers[number - 1])
        assert saved.status_code == 303
    assert saved.headers["Location"] == "/survey/check"

    check = later.get("/survey/check")
    html = _text(check)
    assert check.status_code == 200
    assert f"<title>Check your answers – {TITLE} – carepulse</title>" in html
    assert '<h1 class="heading-l">Check your answers</h1>' in html
    assert html.count("<h1") == 1
    assert "My manager actively encourages staff to develop their skills." in html
    assert "5 – Strongly agree" in html and "Prefer not to say" in html
    assert "Not answered" not in html and "You have not answered" not in html
    assert html.count(">Change<") == 11
    assert 'href="/survey/q/4?change=1"' in html

    # Change question 4 from the check page: back to check, not on to question 5.
    change = _text(later.get("/survey/q/4?change=1"))
    assert 'value="3" checked' in change
    assert '<a href="/survey/check" class="back-link">Back</a>' in change
    changed = _answer(later, 4, "listens_to_staff", "1", query="?change=1")
    assert changed.status_code == 303 and changed.headers["Location"] == "/survey/check"
    answers[3] = "1"

    sent = later.post("/survey/check", data={"csrf_token": csrf_token(html)})
    assert sent.status_code == 303 and sent.headers["Location"] == "/survey/done"
    done = later.get("/survey/done")
    assert done.status_code == 200
    assert "Thank you – your answers have been sent" in _text(done)
    assert _text(done).count("<h1") == 1

    assert web_answers(session, invitation.id) == {
        item: (None if a == "skip" else int(a)) for item, a in zip(ITEMS_360, answers, strict=True)
    }
    assert _count(session, Response) == 1
    response = session.scalars(select(Response)).one()
    assert response.channel == "web" and response.completed_at is not None
    assert session.get(Invitation, invitation.id).status == "completed"

    # Afterwards the survey says it was answered, in either browser; nothing can change.
    assert "You have already answered" in _text(client.get("/survey/q/1"))
    late = client.post("/survey/q/1", data={"csrf_token": csrf_token(first), ITEMS_360[0]: "1"})
    assert "You have already answered" in _text(late)
    assert web_answers(session, invitation.id)["residents_involvement"] == 4


def test_unanswered_questions_can_be_sent_as_not_answered(client, session, factory):
    by_relation, _ = _appraisal(session, factory)
    invitation = by_relation["staff"]
    client.get(f"/s/{invitation.token}")
    _answer(client, 1, "residents_involvement", "2")
    _answer(client, 2, "staff_development", "skip")
    html = _text(client.get("/survey/check"))
    assert "You have not answered 9 questions" in html
    assert "recorded as not answered" in html
    assert html.count("Not answered") == 9
    client.post("/survey/check", data={"csrf_token": csrf_token(html)})
    assert web_answers(session, invitation.id) == {
        "residents_involvement": 2,
        "staff_development": None,
    }
    assert session.get(Invitation, invitation.id).status == "completed"


def test_grouped_items_show_the_group_as_a_caption(client, session, factory):
    home = factory.home("Willow Court")
    factory.person(home, role="manager", given_name="Margaret")
    _, wave = factory.programme([home], [("manager_self_report", {"roles": ["manager"]}, None)])
    open_wave(session, wave, NOW)
    session.commit()
    invitation = session.scalars(select(Invitation)).one()
    client.get(f"/s/{invitation.token}")
    grouped = _text(client.get("/survey/q/8"))
    assert '<span class="caption">Your understanding of local services</span>' in grouped
    assert "How well do you know which local services your care home can use?" in grouped
    assert "Your understanding of local services" not in _text(client.get("/survey/q/1"))


def test_a_one_question_survey_shows_the_question_and_stores_the_answer(client, session, factory):
    invitation = open_morale(session, factory, NOW)
    start = _text(client.get(f"/s/{invitation.token}", follow_redirects=True))
    assert "1 question," in start and "about 1 minute" in start
    assert "only reported put together with other people’s" in start  # not a 360
    page = client.get("/survey/q/1")
    html = _text(page)
    assert "How would you rate morale among the staff in your care home" in html
    assert "1 = Very low, 5 = Very high" in html
    assert "Question 1 of 1" in html
    saved = client.post("/survey/q/1", data={"csrf_token": csrf_token(html), "morale": "4"})
    assert saved.headers["Location"] == "/survey/check"
    client.post("/survey/check", data={"csrf_token": csrf_token(html)})
    assert web_answers(session, invitation.id) == {"morale": 4}
    assert session.get(Invitation, invitation.id).status == "completed"
    again = client.get(f"/s/{invitation.token}")
    assert "You have already answered this survey" in _text(again)


def test_a_missing_choice_is_an_error_and_nothing_is_stored(client, session, factory):
    by_relation, _ = _appraisal(session, factory)
    client.get(f"/s/{by_relation['staff'].token}")
    token = csrf_token(_text(client.get("/survey/q/1")))
    for data in (
        {},
        {"residents_involvement": ""},
        {"residents_involvement": "9"},
        {"residents_involvement": "0"},
        {"residents_involvement": "٣"},
        {"residents_involvement": "4.0"},
        {"staff_development": "4"},
    ):
        response = client.post("/survey/q/1", data={"csrf_token": token, **data})
        html = _text(response)
        assert response.status_code == 400, data
        assert html.index('role="alert"') < html.index("<form")
        assert re.search(r'<div class="error-summary" role="alert"', html)
        assert "There is a problem" in html
        assert '<a href="#residents_involvement-1">' in html
        assert 'id="residents_involvement-1"' in html
        assert "form-group--error" in html and 'id="residents_involvement-error"' in html
        assert f"<title>Error: Question 1 of 11 – {TITLE} – carepulse</title>" in html
    assert _count(session, Answer) == 0
    assert _count(session, Response) == 0


@pytest.mark.parametrize("token", [None, "", "wrong", "é" * 43])
def test_a_post_without_the_sessions_csrf_token_stores_nothing(client, session, factory, token):
    by_relation, _ = _appraisal(session, factory)
    invitation = by_relation["staff"]
    client.get(f"/s/{invitation.token}")
    real = csrf_token(_text(client.get("/survey/q/1")))
    _answer(client, 1, "residents_involvement", "4")
    data = {} if token is None else {"csrf_token": token}
    answer = client.post("/survey/q/2", data={**data, "staff_development": "5"})
    assert answer.status_code == 400
    assert "Your session has expired — please open your link again" in _text(answer)
    send = client.post("/survey/check", data=data)
    assert send.status_code == 400
    assert "Your session has expired" in _text(send)
    assert web_answers(session, invitation.id) == {"residents_involvement": 4}
    assert session.get(Invitation, invitation.id).status == "started"
    assert _count(session, Response) == 1
    # The real token still works.
    retried = client.post("/survey/q/2", data={"csrf_token": real, "staff_development": "5"})
    assert retried.status_code == 303
    assert web_answers(session, invitation.id)["staff_development"] == 5


def test_a_form_left_open_for_one_survey_cannot_store_into_another(client, session, factory):
    by_relation, _ = _appraisal(session, factory)
    line, self_rating = by_relation["line_manager"], by_relation["self"]
    client.get(f"/s/{line.token}")
    stale = csrf_token(_text(client.get("/survey/q/1")))
    client.get(f"/s/{self_rating.token}")  # another link opened in the same browser
    response = client.post("/survey/q/1", data={"csrf_token": stale, "residents_involvement": "5"})
    assert response.status_code == 400
    assert _count(session, Answer) == 0
    # Opening the same link again keeps the token, so other tabs of it keep working.
    fresh = csrf_token(_text(client.get("/survey/q/1")))
    client.get(f"/s/{self_rating.token}")
    assert csrf_token(_text(client.get("/survey/q/1"))) == fresh


def test_sending_twice_keeps_one_response_and_confirms_again(client, session, factory):
    by_relation, _ = _appraisal(session, factory)
    invitation = by_relation["staff"]
    client.get(f"/s/{invitation.token}")
    token = csrf_token(_text(client.get("/survey/check")))
    for _ in range(3):  # a double click, then the back button and a replayed POST
        sent = client.post("/survey/check", data={"csrf_token": token})
        assert sent.status_code == 303 and sent.headers["Location"] == "/survey/done"
        assert "Thank you – your answers have been sent" in _text(client.get("/survey/done"))
    assert _count(session, Response) == 1
    completed = session.get(Invitation, invitation.id)
    assert completed.status == "completed"
    assert [e.status for e in completed.events].count("completed") == 1


def test_done_before_sending_goes_to_check(client, session, factory):
    by_relation, _ = _appraisal(session, factory)
    client.get(f"/s/{by_relation['staff'].token}")
    response = client.get("/survey/done")
    assert response.status_code == 303 and response.headers["Location"] == "/survey/check"


def test_question_numbers_outside_the_survey_are_404(client, session, factory):
    by_relation, _ = _appraisal(session, factory)
    client.get(f"/s/{by_relation['staff'].token}")
    assert client.get("/survey/q/0").status_code == 404
    assert client.get("/survey/q/12").status_code == 404
    assert client.get("/survey/q/1").status_code == 200


# --- without a session -----------------------------------------------------------------


def test_survey_pages_without_a_session_say_to_open_the_link_again(client, session, factory):
    _appraisal(session, factory)
    for path in ("/survey", "/survey/q/1", "/survey/check", "/survey/done"):
        response = client.get(path)
        assert response.status_code == 403, path
        html = _text(response)
        assert "Open your survey link again" in html
        assert "link from your text or email" in html
        assert html.count("<h1") == 1
    for path in ("/survey/q/1", "/survey/check"):
        response = client.post(path, data={"csrf_token": "x", "residents_involvement": "4"})
        assert response.status_code == 403
    assert _count(session, Answer) == 0 and _count(session, Response) == 0


def test_a_forged_or_stale_session_cookie_is_not_a_session(client, session, factory, app):
    by_relation, _ = _appraisal(session, factory)
    client.set_cookie("session", "eyJzdXJ2ZXlfaW52aXRhdGlvbiI6MX0.forged.signature")
    assert client.get("/survey").status_code == 403
    with client.session_transaction() as flask_session:
        flask_session["survey_invitation"] = 10**9  # an invitation that no longer exists
    assert client.get("/survey").status_code == 403


def test_a_session_whose_invitation_has_closed_shows_the_closed_page(client, session, factory):
    by_relation, wave = _appraisal(session, factory)
    invitation = by_relation["staff"]
    client.get(f"/s/{invitation.token}")
    token = csrf_token(_text(client.get("/survey/q/1")))
    wave.opens_at = NOW - dt.timedelta(days=2)
    wave.closes_at = NOW - dt.timedelta(minutes=1)
    session.commit()
    for path in ("/survey", "/survey/q/1", "/survey/check"):
        response = client.get(path)
        assert response.status_code == 410, path
        assert "This survey has closed" in _text(response)
    late = client.post("/survey/q/1", data={"csrf_token": token, "residents_involvement": "4"})
    assert late.status_code == 410
    assert client.post("/survey/check", data={"csrf_token": token}).status_code == 410
    assert _count(session, Answer) == 0
    assert session.get(Invitation, invitation.id).status == "pending"


# --- robustness (moved from test_web.py) -----------------------------------------------


def test_pages_on_an_unmigrated_database_are_503_not_500(tmp_path):
    app = make_app(f"sqlite:///{tmp_path / 'empty.db'}", tmp_path)
    client = app.test_client()
    assert client.get("/").status_code == 302  # to sign in: no database needed for that
    for path in ("/s/" + "A" * 32, "/dev/phone"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert "cannot reach its database" in response.get_data(as_text=True)
        assert "Traceback" not in response.get_data(as_text=True)
    with client.session_transaction() as flask_session:
        flask_session["survey_invitation"] = 1
    assert client.get("/survey").status_code == 503


def test_malformed_survey_links_are_refused_not_500(client):
    for path in ("/s/abc%00def", "/s/" + "x" * 5000, "/s/%F0%9F%99%82", "/s/" + "%00" * 32):
        assert client.get(path).status_code == 404, path
    assert client.post("/s/" + "A" * 32).status_code == 405
