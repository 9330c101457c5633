"""Load test of the whole system at once, on loopback: inbound SMS, outbox dispatch and
evaluator reports, all together on the same database and the same cores.

    scripts/with-postgres .venv/bin/python bench/load.py
    scripts/with-postgres .venv/bin/python bench/load.py --seconds 20 --messages 1000
    .venv/bin/python bench/load.py --help

1. Set-up: migrates the PostgreSQL database (`CAREPULSE_PG_URL`, set by scripts/with-postgres,
   or `--database-url`; it must be empty, or pass --reset to DROP every table). Programme
   `bench`: 100 care homes of a manager and 99 staff (10,000 people), every staff member
   rating their manager (`appraisal_360`, 11 items, relation staff) in an SMS conversation
   opened by `surveys.invitations.open_wave` and `surveys.sms_inbox.opening` (status
   `sent`): 9,900 conversations to move on, as in bench/webhook.py. A second cohort of
   `--messages` care workers (default 5,000), each with a pending `staff_morale` link text
   queued in the outbox (held until the load starts). An evaluator account scoped to the
   programme, with an API token (`storage.accounts.issue_token`). VACUUM ANALYZE.
2. Servers: the fake Twilio (tests.support.twilio_server.FakeTwilio, in this process) and
   the Procfile's `web` command (gunicorn, 2 sync workers) on 127.0.0.1, both configured
   as production would be (`TWILIO_API_BASE_URL` points at the fake). Warm-up: webhooks
   from people the load leaves alone, and quiet report pulls (timed, the baseline).
3. Load, all at once, for `--seconds` (default 60):
   - webhooks: signed inbound SMS at `--rate` per second (default 100), open loop, from
     `--rate` x `--spacing` people (400 by default), each texting every `--spacing` seconds
     (4), so their conversations move on question by question to the end ("4", "four",
     "3 or 4", "SKIP" ...). Latency runs from each request's scheduled time; a text not
     answered within 15 s of it counts as an error, as Twilio gives up on it then;
   - dispatch: one `carepulse dispatch` process (the Procfile's `dispatch`, 4 threads on
     PostgreSQL), pacing off, sends the queued texts through the fake Twilio
     (`--messages 0`: no dispatcher);
   - reports: `--evaluators` (1) evaluators pull `GET /api/v1/programmes/bench/report`,
     each again as soon as the last pull returns (0: none).
   CPU is sampled from /proc every second, per part, and for the machine's other processes.
4. Checks: every text answered 2xx is stored; each person's stored answers are exactly
   those their stored texts give, `surveys.conversation.step` replayed on them in the order
   the server handled them (see `texts_as_taken`); every queued text reached the fake
   exactly once; the dispatcher drained the outbox. Then quiet pulls again, and
   `build_report` and the JSON timed in this process: the report's own cost, apart from
   the load's.

Exit status: 0 when every check passed; 1 when a text or an answer was lost (or one
appeared that no text explains), a queued text was not sent exactly once, the outbox did
not drain, or the server answered 5xx; with --check, 3 when a target was missed: zero
errors (every text answered 2xx within 15 s, every report pull OK). p99 has no target.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import json
import math
import multiprocessing as mp
import os
import platform
import random
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, and bench/reports.py would
# hide the `reports` package: the project's root goes first instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.database import (  # noqa: E402  (after the path fix above)
    STAFF_ROLES,
    add_database_arguments,
    migrate_fresh,
    mobiles,
    open_conversations,
    postmaster_pid,
    psycopg_url,
    queue_texts,
    server_version,
    sms_wave,
    vacuum_analyze,
)
from bench.harness import (  # noqa: E402
    ACCOUNT_SID,
    ANSWERS,
    WEBHOOK_PATH,
    Connection,
    CpuSampler,
    Gunicorn,
    die_with_parent,
    p99_timeline,
    percentile,
    run_as_script,
    signed_webhook,
)

PROGRAMME = "bench"
"""The programme of the run: both cohorts, and the report the evaluator pulls."""
REPORT_PATH = f"/api/v1/programmes/{PROGRAMME}/report"
TWILIO_TIMEOUT = 15.0
"""Twilio gives up on a messaging webhook after 15 seconds."""
ANSWER_LIMIT = 300.0
"""How long the generator waits for an answer all the same (the server still handles a
text Twilio gave up on), to measure the latency past Twilio's 15 s."""
API_TIMEOUT = 300.0
DRAIN_LIMIT = 300.0
"""How long the dispatcher may take, after the webhooks end, to empty the outbox."""
WARMUP_PEOPLE = 40
HELD = dt.timedelta(days=1)
"""The queued texts wait this long, unless released when the load starts."""
EVALUATOR_EMAIL = "evaluator@bench.example.org"


# --------------------------------------------------------------------------- set-up


@dataclass
class SetUp:
    """What the set-up made: who texts, who is texted, the evaluator's API token."""

    numbers: list[str]
    dispatch_numbers: list[str]
    api_token: str
    timings: dict[str, float]


def set_up(url: str, homes: int, staff: int, messages: int, reset: bool) -> SetUp:
    """The conversations (as bench/webhook.py's, rating a manager), the outbox, the evaluator."""
    from storage import db as storage_db

    timings: dict[str, float] = {}
    started = time.perf_counter()
    engine = storage_db.make_engine(url)
    try:
        migrate_fresh(engine, reset)
        with storage_db.make_sessionmaker(engine)() as session:
            numbers = start_conversations(session, homes, staff)
            session.commit()
            timings["conversations"] = time.perf_counter() - started
            started = time.perf_counter()
            dispatch_numbers = mobiles(len(numbers) + messages)[len(numbers) :]
            if dispatch_numbers:
                queue_link_texts(session, dispatch_numbers)
            api_token = evaluator_token(session)
            session.commit()
        vacuum_analyze(engine)
    finally:
        engine.dispose()
    timings["outbox + evaluator + vacuum"] = time.perf_counter() - started
    return SetUp(numbers, dispatch_numbers, api_token, timings)


def start_conversations(session: Any, homes: int, staff: int) -> list[str]:
    """`homes` care homes of a manager and `staff` - 1 staff; every staff member rates
    their manager (`appraisal_360`, relation staff) in an SMS conversation that has been
    opened (status `sent`). The staff's mobiles, which these conversations answer from."""
    from sqlalchemy import insert, select

    from storage.models import CareHome, Cohort, Person, Programme
    from surveys.catalogue import ensure_version
    from surveys.instruments import load_library

    now = dt.datetime.now(dt.UTC)
    session.execute(
        insert(CareHome),
        [{"key": f"bench home {h:03d}", "name": f"Bench Home {h:03d}"} for h in range(homes)],
    )
    home_ids = list(session.scalars(select(CareHome.id).order_by(CareHome.id)))
    numbers = iter(mobiles(homes * (staff - 1)))
    people = []
    for h, home_id in enumerate(home_ids):
        people.append(_person(f"M{h:05d}", "manager", home_id, None, f"manager{h}@bench.example"))
        for s in range(staff - 1):
            role = STAFF_ROLES[s % len(STAFF_ROLES)]
            people.append(_person(f"S{h:03d}{s:03d}", role, home_id, next(numbers), None))
    session.execute(insert(Person), people)
    programme = Programme(key=PROGRAMME, name="Bench programme", settings={})
    cohort = Cohort(programme=programme, key="c1", name="Cohort 1")
    version = ensure_version(session, load_library()["appraisal_360"])
    raters = {"staff": sorted(set(STAFF_ROLES))}
    audience = {"subject_role": "manager", "raters": raters}
    wave = sms_wave(cohort, now, version, audience, "conversation")
    cohort.homes = list(session.scalars(select(CareHome).order_by(CareHome.id)))
    session.add(programme)
    session.flush()
    open_conversations(session, wave, now)
    return [p["mobile"] for p in people if p["mobile"]]


def _person(
    external_id: str, role: str, home_id: int, mobile: str | None, email: str | None
) -> dict[str, Any]:
    return {
        "external_id": external_id,
        "given_name": f"Bench{external_id}",
        "family_name": "Bench",
        "role": role,
        "care_home_id": home_id,
        "mobile": mobile,
        "email": email,
        "active_from": dt.date(2020, 1, 1),
    }


def queue_link_texts(session: Any, numbers: list[str]) -> None:
    """A second cohort of the programme: one care worker per number, each with a pending
    `staff_morale` link text queued in the outbox (as bench/dispatch.py queues them)."""
    from sqlalchemy import select

    from storage.models import CareHome, Cohort, Programme
    from surveys.catalogue import ensure_version
    from surveys.instruments import load_library

    now = dt.datetime.now(dt.UTC)
    version = ensure_version(session, load_library()["staff_morale"])
    programme = session.scalar(select(Programme).where(Programme.key == PROGRAMME))
    # Sending all day long, whatever the hour the benchmark runs at.
    programme.settings = {**programme.settings, "send_window": {"start": "00:00", "end": "23:59"}}
    homes = [
        CareHome(key=f"bench dispatch home {h:03d}", name=f"Bench Dispatch Home {h:03d}")
        for h in range(math.ceil(len(numbers) / 100))
    ]
    cohort = Cohort(programme=programme, key="c2", name="Cohort 2", homes=homes)
    wave = sms_wave(cohort, now, version, {"roles": ["care_worker"]}, "link", opened=True)
    session.add(cohort)
    session.flush()
    _queue_invitations(session, wave.id, version.id, [h.id for h in homes], numbers, now)


def _queue_invitations(
    session: Any,
    wave_id: int,
    version_id: int,
    home_ids: list[int],
    numbers: list[str],
    now: dt.datetime,
) -> None:
    """A care worker per number (100 a home), each with a pending invitation and its
    text queued in the outbox, inserted in bulk as bench/dispatch.py does."""
    from sqlalchemy import insert, select

    from storage.models import Person

    people = [
        {
            "external_id": f"D{i:06d}",
            "given_name": f"Worker{i}",
            "family_name": "Dispatch",
            "role": "care_worker",
            "care_home_id": home_ids[i // 100],
            "mobile": number,
            "active_from": dt.date(2020, 1, 1),
        }
        for i, number in enumerate(numbers)
    ]
    session.execute(insert(Person), people)
    person_ids = session.scalars(
        select(Person.id).where(Person.mobile.in_(numbers)).order_by(Person.id)
    ).all()
    # Held until the load starts: see release_outbox.
    queue_texts(session, wave_id, version_id, person_ids, now, not_before=now + HELD)


def evaluator_token(session: Any) -> str:
    """An evaluator account scoped to the programme, and a new API token of theirs."""
    from storage.accounts import create_account, issue_token

    account = create_account(
        session,
        EVALUATOR_EMAIL,
        secrets.token_urlsafe(18),
        "evaluator",
        name="Bench Evaluator",
        programme_keys=[PROGRAMME],
    )
    _, plaintext = issue_token(session, account, label="bench/load.py")
    return plaintext


# --------------------------------------------------------------------------- processes


def procfile_command(name: str) -> str:
    """The Procfile's command for process type `name`, as written there."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        kind, sep, command = line.partition(":")
        if sep and kind.strip() == name:
            return command.strip()
    raise SystemExit(f"bench: the Procfile has no {name!r} process")


def split_nice(command: str) -> tuple[int, list[str]]:
    """A command's niceness and the command without it: `nice -n 10 x` -> (10, [x])."""
    words = command.split()
    if len(words) > 3 and words[0] == "nice" and words[1] == "-n":
        return int(words[2]), words[3:]
    return 0, words


def system_env(web: Gunicorn, fake_url: str) -> dict[str, str]:
    """One environment for every process, as a deployment gives them: the database, the
    public URL (what Twilio signs), and Twilio's REST API at the fake."""
    return {
        **web.env,
        "TWILIO_API_BASE_URL": fake_url,
        "TWILIO_MESSAGING_SERVICE_SID": "",
        "SEND_RATE_PER_SECOND": "off",
        "SMTP_HOST": "",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


class ProcfileWeb(Gunicorn):
    """The Procfile's `web` command itself (gunicorn "bot:create_app()"), bound to
    127.0.0.1 rather than 0.0.0.0; bench.harness's Gunicorn otherwise."""

    def start(self, timeout: float = 30.0) -> None:
        command = procfile_command("web").replace("0.0.0.0", "127.0.0.1")
        env = {
            **self.env,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(self.workers),
            # Its own control socket: another gunicorn on the machine may hold the default.
            "GUNICORN_CMD_ARGS": f"--control-socket {self.log.with_name('gunicorn.ctl')}",
        }
        with self.log.open("wb") as log:  # gunicorn's log and the app's (stderr) together
            self.proc = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # our Ctrl-C is handled here, then gunicorn stopped
                preexec_fn=die_with_parent,
            )
        self.wait_healthy(timeout)

    def log_count(self, text: str) -> int:
        """Lines of gunicorn's error log that contain `text`."""
        try:
            return sum(text in line for line in self.log.read_text(errors="replace").splitlines())
        except OSError:
            return 0


class Dispatcher:
    """`carepulse dispatch` (the Procfile's `dispatch`) in its own process."""

    def __init__(
        self, env: dict[str, str], log: Path, threads: int | None, nice: int | None
    ) -> None:
        procfile_nice, self.command = split_nice(procfile_command("dispatch"))
        self.env, self.log, self.threads = env, log, threads
        # The Procfile's `nice -n N` is applied here rather than by nice(1): with autogroup
        # scheduling a process's own niceness only counts inside its session, so the
        # session's must be set as well for it to yield to gunicorn.
        self.nice = procfile_nice if nice is None else nice
        self.proc: subprocess.Popen[bytes] | None = None
        self.exit_code: int | None = None
        self.cpu = math.nan

    def start(self) -> None:
        command = list(self.command)
        if self.threads:
            command += ["--threads", str(self.threads)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                command,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=self._in_child,
            )

    def _in_child(self) -> None:
        die_with_parent()
        if self.nice:  # a lower CPU priority than the web workers', when asked
            os.nice(self.nice)
            # With autogroup scheduling (Linux's default), CPU is shared between sessions
            # first: the new session's own niceness is the one that counts against gunicorn.
            with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as group:
                group.write(str(self.nice))

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until it has started (it prints its worker id once its app is made)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the dispatcher exited: {self.summary()}")
            if "carepulse dispatch: worker" in self.log.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the dispatcher did not start within {timeout:.0f} s")

    def stop(self) -> None:
        """SIGTERM (it finishes the message in hand), then SIGKILL after 20 s; its CPU."""
        if self.proc is None or self.exit_code is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = self.exit_code = os.waitstatus_to_exitcode(status)
                self.cpu = usage.ru_utime + usage.ru_stime
                return
            time.sleep(0.1)
        self.proc.kill()
        self.exit_code = self.proc.wait(5)

    def summary(self) -> str:
        """The last line it printed ("carepulse dispatch: stopped; ...")."""
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(no output)"


# --------------------------------------------------------------------------- webhooks


@dataclass
class Plan:
    """The inbound texts of the run, in the order they are sent: request i is due at
    i / rate seconds. Person k of `people` sends requests k, k + len(people), ..."""

    rate: float
    people: list[str]
    numbers: list[str]
    bodies: list[str]
    sids: list[str]
    requests: list[tuple[bytes, dict[str, str]]]


def make_plan(args: argparse.Namespace, token: str, public_url: str, numbers: list[str]) -> Plan:
    """Signed webhooks (signing is not timed) from `rate` x `spacing` people in turn."""
    rng = random.Random(2)
    total = max(1, int(args.rate * args.seconds))
    count = max(1, min(len(numbers), round(args.rate * args.spacing)))
    people = rng.sample(numbers, count)
    plan = Plan(args.rate, people, [], [], [], [])
    for i in range(total):
        number, body = people[i % count], rng.choice(ANSWERS)
        data, headers = signed_webhook(token, public_url, number, body)
        plan.numbers.append(number)
        plan.bodies.append(body)
        plan.sids.append(parse_qs(data.decode())["MessageSid"][0])
        plan.requests.append((data, headers))
    return plan


@dataclass
class SenderSpec:
    """What the load-generator process sends (picklable for multiprocessing)."""

    port: int
    requests: list[tuple[bytes, dict[str, str]]]
    rate: float
    start_at: float  # time.time() at which the first request is due


@dataclass
class WebhookRun:
    """Per request, by index: (due offset, latency, status), or None when never answered."""

    samples: list[tuple[float, float, int] | None]
    late_dispatches: int


def raw_request(port: int, body: bytes, headers: dict[str, str]) -> bytes:
    """The bytes of one webhook POST, on a connection of its own, as Twilio sends it."""
    head = [f"POST {WEBHOOK_PATH} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(head).encode() + body


async def _post(port: int, request: bytes) -> int:
    """Send one request and read its whole answer (gunicorn closes after it); its status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        await reader.read()
        return int(status_line.split()[1])
    finally:
        writer.close()


async def _send_all(spec: SenderSpec) -> WebhookRun:
    """Each request on its own connection at its due time, however many are still waiting
    for an answer: an open loop, as Twilio's are (a pool of client threads would stop
    sending when the server falls behind, and hide its queue)."""
    samples: list[tuple[float, float, int] | None] = [None] * len(spec.requests)
    raw = [raw_request(spec.port, body, headers) for body, headers in spec.requests]

    async def one(i: int, due: float) -> None:
        try:
            status = await asyncio.wait_for(_post(spec.port, raw[i]), ANSWER_LIMIT)
        except TimeoutError:
            return  # never answered
        except (OSError, ValueError, IndexError):
            status = 0  # refused, reset, or closed without an answer
        samples[i] = (due - t0, time.perf_counter() - due, status)

    await asyncio.sleep(max(0.0, spec.start_at - time.time()))
    t0, late, tasks = time.perf_counter(), 0, []
    for i in range(len(raw)):
        due = t0 + i / spec.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.005:
            late += 1  # the generator itself fell behind (reported, should stay 0)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    return WebhookRun(samples, late)


def _sender_main(spec: SenderSpec, results: Any) -> None:
    """Entry point of the load-generator process: send, then hand the samples back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # One socket per request still waiting: as many as the hard limit allows.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results.put(asyncio.run(_send_all(spec)))


def start_sender(spec: SenderSpec) -> tuple[Any, Any]:
    """The generator in its own (spawned) process, and the queue its result comes back on."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_sender_main, args=(spec, results), daemon=True)
    proc.start()
    return proc, results


# --------------------------------------------------------------------------- reports


@dataclass
class Pull:
    """One report pull: when it started (s from the load's start), latency, status, bytes."""

    offset: float
    latency: float
    status: int
    size: int


def pull_report(port: int, token: str) -> tuple[int, int]:
    """GET the programme's report as the evaluator: (status, bytes); status 0 for a
    connection error, 1 for a 200 whose body is not the report."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=API_TIMEOUT)
    try:
        conn.request("GET", REPORT_PATH, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        body = response.read()
    except (http.client.HTTPException, OSError):
        return 0, 0
    finally:
        conn.close()
    if response.status == 200:
        try:
            if "tables" not in json.loads(body):
                return 1, len(body)
        except ValueError:
            return 1, len(body)
    return response.status, len(body)


def evaluator_loop(
    port: int, token: str, start_at: float, stop: threading.Event, pulls: list[Pull]
) -> None:
    """Pull the report again as soon as the last pull returns, until `stop` is set."""
    time.sleep(max(0.0, start_at - time.time()))
    t0 = time.perf_counter()
    while not stop.is_set():
        began = time.perf_counter()
        status, size = pull_report(port, token)
        pulls.append(Pull(began - t0, time.perf_counter() - began, status, size))


def quiet_pulls(port: int, token: str, count: int) -> list[float]:
    """Seconds per pull with nothing else running (but the machine's other processes)."""
    out = []
    for _ in range(count):
        began = time.perf_counter()
        status, _ = pull_report(port, token)
        if status != 200:
            raise RuntimeError(f"a quiet report pull answered {status}")
        out.append(time.perf_counter() - began)
    return out


def report_layer_seconds(url: str, repeats: int) -> dict[str, float]:
    """Median seconds, in this process, of what one pull does: read the frames the report
    starts from, build the report (frames included), and render it as the API's JSON."""
    from flask import json as flask_json

    from bot.api import report_json
    from reports.frames import answers_frame, invitations_frame, items_frame
    from reports.service import ReportRequest, build_report
    from storage import db as storage_db

    engine = storage_db.make_engine(url)
    times: dict[str, list[float]] = defaultdict(list)
    rows: dict[str, float] = {}
    try:
        with storage_db.make_sessionmaker(engine)() as session:
            for _ in range(repeats):
                began = time.perf_counter()
                invitations = invitations_frame(session, PROGRAMME)
                answers = answers_frame(session, PROGRAMME)
                items_frame(session, PROGRAMME)
                times["frames"].append(time.perf_counter() - began)
                rows = {"invitations": len(invitations), "answers": len(answers)}
                began = time.perf_counter()
                built = build_report(session, ReportRequest(PROGRAMME))
                times["report"].append(time.perf_counter() - began)
                began = time.perf_counter()
                flask_json.dumps(report_json(built))  # what jsonify does, without an app
                times["json"].append(time.perf_counter() - began)
                session.rollback()
    finally:
        engine.dispose()
    return {**{k: statistics.median(v) for k, v in times.items()}, **rows}


# --------------------------------------------------------------------------- checks


def replayed_answers(survey: Any, first_name: str, texts: list[str]) -> list[tuple[str, Any]]:
    """The answers `texts`, in this order, should store: the conversation engine replayed
    from a conversation's opening state, as `surveys.sms_inbox` runs it."""
    from surveys import conversation
    from surveys.sms_inbox import MAX_TRIES

    state, out = conversation.State(), []
    for text in texts:
        if state.finished or conversation.keyword(text) is not None:
            continue  # after the thank-you (or for a keyword) nothing is stored
        outcome = conversation.step(survey, state, text, max_tries=MAX_TRIES, first_name=first_name)
        state = outcome.state
        if outcome.answer is not None:
            out.append(outcome.answer)
    return out


@dataclass
class AnswerCheck:
    """The texts of the run and their answers: what the server confirmed, what it stored,
    and what the stored texts should have stored."""

    texts_ok: int = 0
    texts_missing: int = 0  # answered 2xx, not in the database: lost
    texts_late_stored: int = 0  # not answered 2xx in time, stored all the same
    people: int = 0
    people_reordered: int = 0  # whose texts the server took in another order than sent
    expected: int = 0
    stored: int = 0
    missing: int = 0
    unexpected: int = 0

    @property
    def lost(self) -> int:
        return self.texts_missing + self.missing


def check_answers(url: str, plan: Plan, run: WebhookRun) -> AnswerCheck:
    """Every text answered 2xx is stored; each person's answers are exactly what their
    stored texts give, replayed in the order the server took them."""
    from sqlalchemy import select
    from sqlalchemy.orm import joinedload

    from storage import db as storage_db
    from storage.models import Answer, Invitation, Person, Response
    from surveys.sms_inbox import survey_of

    check = AnswerCheck()
    ok = {plan.sids[i] for i, s in enumerate(run.samples) if s and _answered_ok(s)}
    sent_order = {sid: i for i, sid in enumerate(plan.sids)}
    people = sorted(set(plan.people))
    engine = storage_db.make_engine(url)
    try:
        with storage_db.make_sessionmaker(engine)() as session:
            taken = texts_as_taken(session, people)
            stored_sids = {sid for texts in taken.values() for sid, _ in texts}
            check.texts_ok, check.texts_missing = len(ok), len(ok - stored_sids)
            check.texts_late_stored = len(stored_sids & set(plan.sids) - ok)
            stored: dict[str, list[tuple[str, Any]]] = defaultdict(list)
            for number, item_id, value in session.execute(
                select(Person.mobile, Answer.item_id, Answer.value)
                .join(Response, Answer.response_id == Response.id)
                .join(Invitation, Response.invitation_id == Invitation.id)
                .join(Person, Invitation.person_id == Person.id)
                .where(Person.mobile.in_(people))
                .order_by(Answer.id)
            ):
                stored[number].append((item_id, value))
            for invitation in session.scalars(
                select(Invitation)
                .join(Person, Invitation.person_id == Person.id)
                .where(Person.mobile.in_(people))
                .options(joinedload(Invitation.person), joinedload(Invitation.instrument_version))
            ):
                number = invitation.person.mobile
                texts = taken.get(number, [])
                order = [sent_order.get(sid, -1) for sid, _ in texts]
                check.people_reordered += order != sorted(order)
                bodies = [body for _, body in texts]
                want = replayed_answers(survey_of(invitation), invitation.person.given_name, bodies)
                _compare(check, want, stored[number])
    finally:
        engine.dispose()
    return check


def texts_as_taken(session: Any, numbers: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Each person's stored texts (provider id, body) in the order the server handled them.

    A person's texts are handled one at a time (their conversation row is locked until the
    commit), and the replies to a text are stored while the lock is held, with the text's
    own timestamp: so the order of the first reply's id is the order of handling.
    """
    from sqlalchemy import func, select

    from storage.models import Message, Person

    inbound = session.execute(
        select(Message.id, Message.person_id, Message.created_at, Message.provider_id)
        .add_columns(Message.body, Person.mobile)
        .join(Person, Message.person_id == Person.id)
        .where(Message.direction == "in", Person.mobile.in_(numbers))
    ).all()
    first_reply = {
        (person_id, at): reply_id
        for person_id, at, reply_id in session.execute(
            select(Message.person_id, Message.created_at, func.min(Message.id))
            .where(
                Message.direction == "out",
                Message.person_id.in_({row.person_id for row in inbound}),
            )
            .group_by(Message.person_id, Message.created_at)
        )
    }
    taken: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for row in inbound:
        key = first_reply.get((row.person_id, row.created_at), row.id)
        taken[row.mobile].append((key, row.provider_id, row.body))
    return {
        number: [(sid, body) for _, sid, body in sorted(rows)] for number, rows in taken.items()
    }


def _answered_ok(sample: tuple[float, float, int]) -> bool:
    """2xx, and within Twilio's 15 s (after which Twilio would have given up on it)."""
    return 200 <= sample[2] < 300 and sample[1] <= TWILIO_TIMEOUT


def _compare(check: AnswerCheck, want: list[tuple[str, Any]], got: list[tuple[str, Any]]) -> None:
    check.people += 1
    check.expected += len(want)
    check.stored += len(got)
    want_left, got_left = Counter(want), Counter(got)
    check.missing += sum((want_left - got_left).values())
    check.unexpected += sum((got_left - want_left).values())


def check_dispatch(url: str, fake: Any, numbers: list[str]) -> dict[str, Any]:
    """What the fake Twilio received for the queued texts, and what the outbox says."""
    from sqlalchemy import func, select

    from storage import db as storage_db
    from storage.models import OutboxItem

    messages = fake.messages
    wanted = set(numbers)
    to = Counter(m["to"] for m in messages if m["to"] in wanted)
    times = sorted(m["received_at"] for m in messages if m["to"] in wanted)
    engine = storage_db.make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(OutboxItem.status, func.count()).group_by(OutboxItem.status)
            ).all()
    finally:
        engine.dispose()
    return {
        "received": sum(to.values()),
        "once": sum(1 for n in numbers if to[n] == 1),
        "twice_or_more": sum(1 for n in numbers if to[n] > 1),
        "never": sum(1 for n in numbers if to[n] == 0),
        "other": len(messages) - sum(to.values()),
        "span": (times[-1] - times[0]).total_seconds() if len(times) > 1 else math.nan,
        "first": times[0] if times else None,
        "outbox": dict(rows),
    }


def release_outbox(url: str, at: float) -> None:
    """Make the held texts due at `at` (time.time()), as if a wave opened then."""
    from sqlalchemy import update

    from storage import db as storage_db
    from storage.models import OutboxItem

    engine = storage_db.make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(OutboxItem)
                .where(OutboxItem.status == "queued")
                .values(not_before=dt.datetime.fromtimestamp(at, dt.UTC))
            )
    finally:
        engine.dispose()


def outbox_left(url: str) -> int:
    """Rows still queued or being sent."""
    from sqlalchemy import func, select

    from storage import db as storage_db
    from storage.models import OutboxItem

    engine = storage_db.make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.scalar(
                select(func.count())
                .select_from(OutboxItem)
                .where(OutboxItem.status.in_(("queued", "sending")))
            )
    finally:
        engine.dispose()


def wait_for_drain(url: str, limit: float) -> float | None:
    """Wait until the outbox is empty; seconds waited, or None after `limit`."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        if not outbox_left(url):
            return time.monotonic() - began
        time.sleep(0.5)
    return None


# --------------------------------------------------------------------------- the run


@dataclass
class Results:
    """Everything measured in one run, for `print_report` and the exit status."""

    plan: Plan
    run: WebhookRun
    pulls: list[Pull]
    cpu: CpuSampler
    answers: AnswerCheck
    dispatch: dict[str, Any]
    drained_after: float | None
    quiet_before: list[float]
    quiet_after: list[float]
    layer: dict[str, float]
    start_at: float
    worker_timeouts: int
    dispatcher_summary: str
    dispatcher_cpu: float


def warm_up(web: ProcfileWeb, token: str, numbers: list[str]) -> None:
    """Both workers import, connect and fill their caches (people the load leaves alone)."""
    conn = Connection("127.0.0.1", web.port, TWILIO_TIMEOUT)
    statuses: Counter = Counter()
    for number in numbers:
        data, headers = signed_webhook(token, web.url, number, "4")
        statuses[conn.request("POST", WEBHOOK_PATH, data, headers)] += 1
    conn.close()
    if set(statuses) != {200}:
        raise RuntimeError(f"warm-up statuses {dict(statuses)}:\n{web.log_tail()}")


def run_load(
    args: argparse.Namespace,
    url: str,
    web: ProcfileWeb,
    dispatcher: Dispatcher | None,
    plan: Plan,
    api_token: str,
) -> tuple[WebhookRun, list[Pull], CpuSampler, float]:
    """Webhooks, dispatch and report pulls at once; CPU sampled while the webhooks run."""
    start_at = time.time() + 3.0  # the generator's process starts meanwhile
    spec = SenderSpec(web.port, plan.requests, args.rate, start_at)
    sender, results = start_sender(spec)
    if dispatcher is not None:
        release_outbox(url, start_at)
    stop, pulls = threading.Event(), []
    evaluators = [
        threading.Thread(
            target=evaluator_loop, args=(web.port, api_token, start_at, stop, pulls), daemon=True
        )
        for _ in range(args.evaluators)
    ]
    for evaluator in evaluators:
        evaluator.start()
    assert web.proc is not None
    parts = {
        "gunicorn (web, 2 workers)": {web.proc.pid},
        "dispatcher": {dispatcher.proc.pid if dispatcher and dispatcher.proc else -1},
        "PostgreSQL": {postmaster_pid(url) or -1},
        "load generator": {sender.pid},
        "bench (fake Twilio, evaluator)": {os.getpid()},
    }
    try:
        with CpuSampler(parts) as cpu:
            run = results.get(timeout=args.seconds + ANSWER_LIMIT + 60)
    finally:
        stop.set()
        for evaluator in evaluators:
            evaluator.join(API_TIMEOUT)
        sender.join(5)
        if sender.is_alive():
            sender.terminate()
    return run, pulls, cpu, start_at


def measure(args: argparse.Namespace, url: str, setup: SetUp, tmp: Path) -> Results:
    """Servers up, warm-up and quiet pulls, the load, the checks; servers down."""
    from tests.support.twilio_server import FakeTwilio

    token = "bench-" + secrets.token_hex(16)
    with FakeTwilio(ACCOUNT_SID, token) as fake:
        web = ProcfileWeb(url, token, tmp, args.workers)
        web.env = system_env(web, fake.base_url)
        dispatcher = None
        if args.messages:
            log = tmp / "dispatch.log"
            dispatcher = Dispatcher(web.env, log, args.dispatch_threads, args.dispatch_nice)
        try:
            web.start()
            print(f"bench: `{procfile_command('web')}` on {web.url} ({args.workers} workers)")
            if dispatcher is not None:
                dispatcher.start()  # it waits for the held texts to be released
                print(f"bench: `{' '.join(dispatcher.command)}` at niceness {dispatcher.nice}")
            warm_up(web, token, setup.numbers[-WARMUP_PEOPLE:])
            quiet_pulls(web.port, setup.api_token, 2)  # untimed: each worker's first pull
            quiet_before = quiet_pulls(web.port, setup.api_token, 3)
            plan = make_plan(args, token, web.url, setup.numbers[:-WARMUP_PEOPLE])
            if dispatcher is not None:
                dispatcher.wait_ready()
            print(f"bench: load for {args.seconds:g} s: {args.rate:g} texts/s from "
                  f"{len(plan.people)} people, {args.messages} queued texts, "
                  f"{args.evaluators} evaluator(s) pulling reports ...")  # fmt: skip
            run, pulls, cpu, start_at = run_load(args, url, web, dispatcher, plan, setup.api_token)
            drained = wait_for_drain(url, DRAIN_LIMIT)
            if dispatcher is not None:
                dispatcher.stop()
            print("bench: checking texts, answers and messages; quiet pulls ...")
            answers = check_answers(url, plan, run)
            dispatch = check_dispatch(url, fake, setup.dispatch_numbers)
            quiet_after = quiet_pulls(web.port, setup.api_token, 3)
            layer = report_layer_seconds(url, 3)
            timeouts = web.log_count("WORKER TIMEOUT")
        except Exception:
            print(f"bench: gunicorn's log ends:\n{web.log_tail()}", file=sys.stderr)
            raise
        finally:
            if dispatcher is not None:
                dispatcher.stop()
            web.stop()
    return Results(
        plan, run, pulls, cpu, answers, dispatch, drained, quiet_before, quiet_after, layer,
        start_at, timeouts,
        dispatcher.summary() if dispatcher else "(no dispatcher)",
        dispatcher.cpu if dispatcher else math.nan,
    )  # fmt: skip


# --------------------------------------------------------------------------- figures


def _ms(values: list[float], p: float) -> float:
    return percentile(sorted(values), p) * 1000


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


OVERDUE = -2
"""A status of ours: answered, but more than 15 s after it was due (Twilio gave up)."""
UNANSWERED = -1
_NAMES = {
    OVERDUE: "answered after Twilio's 15 s",
    UNANSWERED: f"no answer in {ANSWER_LIMIT:.0f} s",
    0: "connection error or timeout",
    1: "not a report",
}


def webhook_statuses(run: WebhookRun) -> Counter:
    """Each request's outcome: its HTTP status, OVERDUE or UNANSWERED."""
    outcomes: Counter = Counter()
    for sample in run.samples:
        if sample is None:
            outcomes[UNANSWERED] += 1
        elif 200 <= sample[2] < 300 and not _answered_ok(sample):
            outcomes[OVERDUE] += 1
        else:
            outcomes[sample[2]] += 1
    return outcomes


def _failures(outcomes: Counter) -> str:
    bad = {s: n for s, n in outcomes.items() if not 200 <= s < 300}
    return ", ".join(f"{n} x {_NAMES.get(s, s)}" for s, n in sorted(bad.items())) or "none"


def webhook_rows(args: argparse.Namespace, r: Results) -> list[tuple[str, str]]:
    samples = [s for s in r.run.samples if s is not None]
    outcomes = webhook_statuses(r.run)
    ok = sum(n for s, n in outcomes.items() if 200 <= s < 300)
    answered = sum(1 for s in samples if 200 <= s[2] < 300)
    span = max((s[0] + s[1] for s in samples), default=math.nan)
    latencies = [s[1] for s in samples]
    return [
        ("texts sent", f"{len(r.plan.requests)} from {len(r.plan.people)} people, "
                       f"each every {args.spacing:g} s"),
        ("achieved rate", f"{ok / span:.1f}/s answered 2xx within 15 s; all {answered} "
                          f"answered at {answered / span:.1f}/s"),
        ("latency p50 / p95 / p99", f"{_ms(latencies, 50):.1f} / {_ms(latencies, 95):.1f} / "
                                    f"{_ms(latencies, 99):.1f} ms"),
        ("latency max", f"{_ms(latencies, 100):.1f} ms"),
        ("p99 per 5 s window", p99_timeline(samples)),
        ("non-2xx (or over 15 s)", f"{len(r.run.samples) - ok} ({_failures(outcomes)})"),
        ("5xx", f"{sum(n for s, n in outcomes.items() if s >= 500)}"),
        ("generator late dispatches", f"{r.run.late_dispatches}"),
    ]  # fmt: skip


def answer_rows(r: Results) -> list[tuple[str, str]]:
    a = r.answers
    return [
        ("texts answered OK / stored", f"{a.texts_ok} / {a.texts_ok - a.texts_missing} "
                                       f"(+{a.texts_late_stored} stored, not answered OK)"),
        ("people", f"{a.people}; {a.people_reordered} had texts handled out of order"),
        ("answers expected / stored", f"{a.expected} / {a.stored} (conversations replayed)"),
        ("answers lost / unexpected", f"{a.missing} / {a.unexpected}"),
    ]  # fmt: skip


def dispatch_rows(r: Results) -> list[tuple[str, str]]:
    d = r.dispatch
    queued = d["once"] + d["twice_or_more"] + d["never"]
    if not queued:
        return [("texts queued", "none (--messages 0)")]
    first = (d["first"].timestamp() - r.start_at) if d["first"] else math.nan
    drained = "not within the limit" if r.drained_after is None else (
        f"{r.drained_after:.1f} s after the webhooks ended")  # fmt: skip
    return [
        ("texts queued / received", f"{queued} / {d['received']} by the fake Twilio"),
        ("exactly once", f"{d['once']} (twice or more: {d['twice_or_more']}, "
                         f"never: {d['never']}; other texts: {d['other']})"),
        ("send span", f"first at t={first:+.1f} s, {d['span']:.1f} s to the last, "
                      f"{d['received'] / d['span']:.0f} msg/s"),
        ("outbox drained", drained),
        ("outbox rows", ", ".join(f"{k} {v}" for k, v in sorted(d["outbox"].items()))),
        ("dispatcher CPU", f"{r.dispatcher_cpu:.1f} s in all"),
        ("dispatcher said", r.dispatcher_summary.removeprefix("carepulse dispatch: ")),
    ]  # fmt: skip


def api_rows(r: Results) -> list[tuple[str, str]]:
    if not r.pulls:
        return [("pulls done", "none"), *_report_cost_rows(r)]
    latencies = [p.latency for p in r.pulls]
    outcomes = Counter(p.status for p in r.pulls)
    sizes = [p.size for p in r.pulls if p.status == 200] or [0]
    return [
        ("pulls done", f"{len(r.pulls)} ({outcomes.get(200, 0)} OK; failed: "
                       f"{_failures(outcomes)}), {statistics.mean(sizes) / 1024:.0f} KiB each"),
        ("under load p50 / p99 / max", f"{_ms(latencies, 50):.0f} / {_ms(latencies, 99):.0f} / "
                                       f"{_ms(latencies, 100):.0f} ms"),
        *_report_cost_rows(r),
    ]  # fmt: skip


def _report_cost_rows(r: Results) -> list[tuple[str, str]]:
    layer = r.layer
    return [
        ("quiet, before / after", f"{_median_ms(r.quiet_before):.0f} / "
                                  f"{_median_ms(r.quiet_after):.0f} ms (medians of 3)"),
        ("in-process, after", f"build_report {layer['report'] * 1000:.0f} ms (reading the "
                              f"frames {layer['frames'] * 1000:.0f} ms of it), "
                              f"JSON {layer['json'] * 1000:.0f} ms"),
        ("report's input", f"{layer['invitations']:.0f} invitations, "
                           f"{layer['answers']:.0f} answers"),
        ("gunicorn worker timeouts", f"{r.worker_timeouts}"),
    ]  # fmt: skip


def cpu_rows(r: Results) -> list[tuple[str, str]]:
    return [
        (label, f"{r.cpu.mean(label):.2f} cores on average, {r.cpu.peak(label):.2f} at most")
        for label in r.cpu.used
    ]


def print_report(args: argparse.Namespace, r: Results, elapsed: float) -> None:
    line = "-" * 78
    sections = (
        (f"Inbound SMS: POST {WEBHOOK_PATH}, open loop, {args.rate:g}/s for {args.seconds:g} s",
         webhook_rows(args, r)),
        ("Answers: what the server confirmed, what it stored, what it should have stored",
         answer_rows(r)),
        ("Dispatch: carepulse dispatch, pacing off, through the fake Twilio", dispatch_rows(r)),
        (f"Reports: GET {REPORT_PATH} in a loop, {args.evaluators} evaluator(s)", api_rows(r)),
        ("CPU while the webhooks ran (the machine has 2.00 cores)", cpu_rows(r)),
    )  # fmt: skip
    for title, rows in sections:
        print(f"{line}\n{title}\n{line}")
        for label, value in rows:
            print(f"  {label:<30} {value}")
    print(f"{line}\n  total run time {elapsed:.0f} s")


def verdict(args: argparse.Namespace, r: Results) -> int:
    """0, 1 (something lost, duplicated, undrained, or a 5xx) or 3 (a target missed)."""
    outcomes = webhook_statuses(r.run)
    errors = sum(n for s, n in outcomes.items() if not 200 <= s < 300)
    failed_pulls = sum(p.status != 200 for p in r.pulls)
    d, a = r.dispatch, r.answers
    queued = d["once"] + d["twice_or_more"] + d["never"]

    def met(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    print("Targets")
    print(f"  zero errors        {errors} texts, {failed_pulls} report pulls not OK: "
          f"{met(not errors and not failed_pulls)}")  # fmt: skip
    print(f"  zero lost answers  {a.lost} lost, {a.unexpected} unexpected: "
          f"{met(not a.lost and not a.unexpected)}")  # fmt: skip
    print(f"  exactly once       {d['once']} of {queued} queued texts: {met(d['once'] == queued)}")
    broken = {
        "texts or answers lost or unexpected": a.lost + a.unexpected,
        "texts not sent exactly once": queued - d["once"],
        "outbox not drained": int(r.drained_after is None),
        "5xx from the server": sum(n for s, n in outcomes.items() if s >= 500),
    }
    problems = [f"{n} {what}" for what, n in broken.items() if n]
    if problems:
        print(f"bench: FAILED: {'; '.join(problems)}")
        return 1
    return 3 if args.check and (errors or failed_pulls) else 0


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/load.py",
        description="The whole system under load (run under scripts/with-postgres).",
    )
    add_database_arguments(parser)
    parser.add_argument("--rate", type=float, default=100.0, help="inbound texts/s (100)")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of the load (60)")
    parser.add_argument(
        "--messages", type=int, default=5000, help="queued texts (5000; 0: no dispatcher)"
    )
    parser.add_argument(
        "--evaluators", type=int, default=1, help="evaluators pulling reports (1; 0: none)"
    )
    parser.add_argument(
        "--spacing", type=float, default=4.0, help="seconds between one person's texts (4)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2, Procfile)")
    parser.add_argument(
        "--dispatch-threads", type=int, help="dispatcher threads (default: the CLI's, 4)"
    )
    parser.add_argument(
        "--dispatch-nice",
        type=int,
        help="run the dispatcher at this niceness (default: the Procfile's, 10; 0: not niced)",
    )
    parser.add_argument("--homes", type=int, default=100, help="care homes (100)")
    parser.add_argument("--staff", type=int, default=100, help="staff per home (100)")
    parser.add_argument("--check", action="store_true", help="exit 3 when a target is missed")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("no database: run under scripts/with-postgres or pass --database-url")
    if args.rate <= 0 or args.seconds <= 0 or args.spacing <= 0:
        parser.error("--rate, --seconds and --spacing must be positive")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.messages < 0 or args.evaluators < 0:
        parser.error("--messages and --evaluators must not be negative")
    if args.homes * args.staff <= WARMUP_PEOPLE:
        parser.error(f"--homes x --staff must be more than {WARMUP_PEOPLE}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Set up, run the load, check, print; see the module docstring for the exit status."""
    args = parse_args(argv)
    url = psycopg_url(args.database_url)
    began = time.perf_counter()
    print(
        f"bench: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), "
        f"{platform.machine()}, Python {platform.python_version()}, PostgreSQL "
        f"{server_version(url).split()[0]}, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"bench: set-up: {args.homes} x {args.staff} people in SMS conversations, "
          f"{args.messages} queued texts, an evaluator ...")  # fmt: skip
    setup = set_up(url, args.homes, args.staff, args.messages, args.reset)
    print(
        "bench: set-up done (" + ", ".join(f"{k} {v:.1f}s" for k, v in setup.timings.items()) + ")"
    )
    with tempfile.TemporaryDirectory(prefix="carepulse-load-") as tmp:
        results = measure(args, url, setup, Path(tmp))
    print_report(args, results, time.perf_counter() - began)
    return verdict(args, results)


if __name__ == "__main__":
    run_as_script(main)
