"""From collection to report: morale answered by SMS (through the Twilio-compatible server
and the signed webhook) and by the web form, in a baseline and an end wave; then the CSV
written by `carepulse report --out`, the JSON API and a hand calculation must all agree."""

from __future__ import annotations

import csv
import datetime as dt
import math

import requests
from sqlalchemy import select

from bot.cli import cli
from bot.outbound import Outbound
from bot.transports import DevMailbox, TwilioSms
from storage.accounts import create_account, issue_token
from storage.models import Invitation, Wave
from surveys.invitations import open_wave
from tests.support.web import csrf_token

NOW = dt.datetime.now(dt.UTC)
STAFF = ["deputy_manager", "nurse", "senior_care_worker", "care_worker"]
BEFORE = [2, 3, 2, 3, 4, 2]
AFTER = [4, 4, 3, 3, 5, 4]
BY_SMS = 3  # the first three answer by text, the others on the web form


def _collect(session, live, twilio_fake, wave, workers, values):
    """Open the wave, text everyone, and have each worker answer their one question."""
    open_wave(session, wave, NOW)
    session.commit()
    outbound = Outbound(live.settings(), TwilioSms(live.settings(), timeout=5), DevMailbox())
    assert outbound.send_pending(session, NOW) == len(workers)
    session.commit()
    for n, (worker, value) in enumerate(zip(workers, values, strict=True)):
        if n < BY_SMS:
            reply = twilio_fake.deliver_inbound(f"{live.url}/twilio/sms", worker.mobile, str(value))
            assert reply.status_code == 200 and "Thank you" in reply.text
        else:
            _answer_on_the_web(live, session, wave, worker, value)
    session.rollback()  # end the read transaction: the app has written since


def _answer_on_the_web(live, session, wave, worker, value):
    token = session.scalar(
        select(Invitation.token).where(
            Invitation.wave_id == wave.id, Invitation.person_id == worker.id
        )
    )
    browser = requests.Session()
    assert browser.get(f"{live.url}/s/{token}").status_code == 200
    page = browser.get(f"{live.url}/survey/q/1").text
    csrf = csrf_token(page)
    browser.post(f"{live.url}/survey/q/1", data={"csrf_token": csrf, "morale": str(value)})
    done = browser.post(f"{live.url}/survey/check", data={"csrf_token": csrf})
    assert done.status_code == 200


def _is_morale_item(row) -> bool:
    return row["measure"] == "item" and row["measure_id"] == "morale"


def _hand_calculation(before, after):
    """Paired change worked out step by step, without scipy."""
    diffs = [b - a for a, b in zip(before, after, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    return {
        "n_pairs": n,
        "mean_pre": sum(before) / n,
        "mean_post": sum(after) / n,
        "mean_diff": mean,
        "t": mean / (sd / math.sqrt(n)),
        "d_z": mean / sd,
    }


def test_sms_and_web_answers_reach_the_csv_and_the_api_identically(
    session, factory, live_twilio_app, twilio_fake, tmp_path
):
    home = factory.home("Willow Court")
    workers = [factory.person(home, given_name=f"Worker{n}") for n in range(6)]
    programme, baseline = factory.programme(
        [home],
        [("staff_morale", {"roles": STAFF}, "sms")],
        opens=NOW - dt.timedelta(hours=3),
        closes=NOW + dt.timedelta(days=7),
    )
    _collect(session, live_twilio_app, twilio_fake, baseline, workers, BEFORE)

    baseline = session.get(Wave, baseline.id)
    baseline.closes_at = NOW - dt.timedelta(minutes=1)
    end = factory.later_wave(
        baseline, opens=NOW - dt.timedelta(hours=1), closes=NOW + dt.timedelta(days=7)
    )
    session.commit()
    _collect(session, live_twilio_app, twilio_fake, end, workers, AFTER)

    # The CSV files of `carepulse report --out`.
    out = tmp_path / "report"
    result = live_twilio_app.app.test_cli_runner().invoke(
        cli, args=["report", "--programme", programme.key, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    session.rollback()  # end the read transaction: the command has written (its audit event)
    with open(out / "prepost.csv", encoding="utf-8-sig", newline="") as file:
        csv_rows = [r for r in csv.DictReader(file) if _is_morale_item(r)]
    (csv_row,) = csv_rows
    assert (out / "report.xlsx").stat().st_size > 0
    assert (out / "charts" / "prepost.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The API, with an evaluator's token.
    evaluator = create_account(
        session,
        "eval@example.org",
        "a long enough password",
        "evaluator",
        programme_keys=[programme.key],
    )
    _, token = issue_token(session, evaluator)
    session.commit()
    response = requests.get(
        f"{live_twilio_app.url}/api/v1/programmes/{programme.key}/tables/prepost",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    (api_row,) = [r for r in response.json()["tables"]["prepost"]["rows"] if _is_morale_item(r)]

    expected = _hand_calculation(BEFORE, AFTER)
    for column, value in expected.items():
        assert float(csv_row[column]) == float(api_row[column]), column
        assert math.isclose(float(api_row[column]), value, abs_tol=0.0005), column

    rates = requests.get(
        f"{live_twilio_app.url}/api/v1/programmes/{programme.key}/tables/response_rates",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    ).json()["tables"]["response_rates"]["rows"]
    with open(out / "response_rates.csv", encoding="utf-8-sig", newline="") as file:
        csv_rates = list(csv.DictReader(file))
    for wave_key in ("baseline", "end"):
        (api,) = [r for r in rates if r["wave"] == wave_key and r["instrument"] == "staff_morale"]
        (row,) = [
            r for r in csv_rates if r["wave"] == wave_key and r["instrument"] == "staff_morale"
        ]
        assert (api["invited"], api["completed"], api["RR1"]) == (6, 6, 1.0)
        assert (int(row["invited"]), int(row["completed"]), float(row["RR1"])) == (6, 6, 1.0)
