"""The data fingerprint that decides whether a cached report may be reused."""

from __future__ import annotations

from reports.frames import data_version
from storage.audit import record
from surveys.invitations import open_wave


def test_the_fingerprint_changes_exactly_when_a_report_could(session, factory):
    home = factory.home("Willow Court")
    factory.person(home)
    programme, wave = factory.programme(
        [home], [("staff_morale", {"roles": ["care_worker"]}, "sms")]
    )
    before = data_version(session, programme.key)
    assert data_version(session, programme.key) == before  # nothing changed
    open_wave(session, wave, wave.opens_at)  # invitations and their status events
    session.flush()
    opened = data_version(session, programme.key)
    assert opened != before
    record(session, "retention_purge", actor="system")  # an erasure or purge writes one
    session.flush()
    assert data_version(session, programme.key) != opened
