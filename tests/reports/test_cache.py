"""Reports reused while their data is unchanged, and rebuilt the moment it changes."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from reports.cache import ReportCache
from reports.service import ReportError, ReportRequest
from storage.models import Invitation
from surveys.answers import complete_response, record_answer
from surveys.invitations import open_wave


@pytest.fixture
def programme(session, factory):
    """Six care workers asked staff morale; five have answered 3."""
    home = factory.home("Willow Court")
    for _ in range(6):
        factory.person(home)
    programme, wave = factory.programme(
        [home], [("staff_morale", {"roles": ["care_worker"]}, "sms")]
    )
    open_wave(session, wave, wave.opens_at)
    invitations = session.scalars(select(Invitation).order_by(Invitation.id)).all()
    for invitation in invitations[:5]:
        record_answer(session, invitation, "morale", 3, "sms", wave.opens_at)
        complete_response(session, invitation, wave.opens_at)
    session.commit()
    return programme.key, invitations[5], wave


def _morale(report):
    row = report.tables["morale_by_home"].iloc[0]
    return row["n_respondents"], row["mean"]


def test_the_same_request_on_the_same_data_is_built_once(session, programme):
    key, _, _ = programme
    cache = ReportCache()
    first = cache.report(session, ReportRequest(key))
    again = cache.report(session, ReportRequest(key))
    assert again is first and (cache.builds, cache.hits) == (1, 1)
    assert _morale(first) == (5, 3.0)


def test_a_new_answer_gives_a_new_report_at_once(session, programme):
    key, sixth, wave = programme
    cache = ReportCache()
    assert _morale(cache.report(session, ReportRequest(key))) == (5, 3.0)
    record_answer(session, sixth, "morale", 5, "sms", wave.opens_at)
    complete_response(session, sixth, wave.opens_at)
    session.commit()
    rebuilt = cache.report(session, ReportRequest(key))
    assert _morale(rebuilt) == (6, pytest.approx(20 / 6, abs=1e-3)) and cache.builds == 2


def test_other_waves_or_filters_are_other_reports(session, programme):
    key, _, _ = programme
    cache = ReportCache()
    cache.report(session, ReportRequest(key))
    cache.report(session, ReportRequest(key, filters={"channel": "sms"}))
    assert (cache.builds, cache.hits) == (2, 0)


def test_errors_are_raised_every_time_and_never_cached(session, programme):
    cache = ReportCache()
    for _ in range(2):
        with pytest.raises(ReportError, match="no programme"):
            cache.report(session, ReportRequest("nowhere"))
    assert cache.builds == 0


def test_the_oldest_report_makes_room(session, programme):
    key, _, _ = programme
    cache = ReportCache(size=1)
    first = cache.report(session, ReportRequest(key))
    cache.report(session, ReportRequest(key, filters={"channel": "sms"}))
    assert cache.report(session, ReportRequest(key)) is not first and cache.builds == 3
