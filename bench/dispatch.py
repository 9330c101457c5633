"""Benchmark of the outbox dispatcher against a plain SDK loop, through a Twilio-compatible
server on loopback (tests.support.twilio_server.FakeTwilio, in this process).

    scripts/with-postgres .venv/bin/python bench/dispatch.py
    scripts/with-postgres .venv/bin/python bench/dispatch.py --latency-ms 100 --messages 1000

1. Set-up: migrates the PostgreSQL database (`CAREPULSE_PG_URL`, set by scripts/with-postgres,
   or `--database-url`; it must be empty, or pass --reset to DROP every table), inserts
   `--messages` care workers (default 10,000) with one pending SMS invitation each in an
   open wave (a text with the survey link; `--conversation` for the SMS conversation),
   and queues one outbox row per invitation.
2. Plain loop: one process calls `client.messages.create` with the official SDK, one
   message at a time, with the client the app builds (`bot.transports.TwilioSms`): the
   cost of talking to Twilio and nothing else.
3. Dispatcher: `--dispatchers` processes (default 2) run `bot.dispatch.run_dispatcher`
   with `--threads` each (default 4), pacing off, until every row is sent.
4. Report: messages/s and CPU seconds per message of each (the measuring processes' own
   CPU: getrusage of the child, i.e. not the PostgreSQL server nor the fake Twilio, whose
   CPU is shown on its own line), and the ratio dispatcher / plain loop (target >= 3).

`--latency-ms N` makes the fake stall every request N ms before answering, as the
internet and Twilio do (about 100-300 ms from a UK host): the waits threads overlap.
Exit status 0 when every message was sent exactly once, 1 when not; with --check, 3 when
the ratio is under the target.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path, and bench/reports.py would
# hide the `reports` package: the project's root goes first instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.database import (  # noqa: E402  (after the path fix above)
    migrate_fresh,
    psycopg_url,
    queue_texts,
    sms_wave,
    vacuum_analyze,
)

ACCOUNT_SID = "AC" + "d" * 32
AUTH_TOKEN = "bench-auth-token-0123456789abcdef"
TWILIO_NUMBER = "+447700999998"
RATIO_TARGET = 3.0

PLAIN_LOOP = """
import json, sys, time
from bot.config import load_settings
from bot.transports import SMS_VALIDITY_SECONDS, TwilioSms
settings = load_settings()
client = TwilioSms(settings).client  # the client the app builds: one Client, one HTTP session
numbers = [f"+447800{i:06d}" for i in range(int(sys.argv[1]))]
body = sys.argv[2]
start_cpu, start = time.process_time(), time.perf_counter()
for number in numbers:
    client.messages.create(
        to=number, from_=settings.twilio.from_number, body=body,
        status_callback=f"{settings.public_base_url}/twilio/status",
        validity_period=SMS_VALIDITY_SECONDS,
    )
print(json.dumps({"seconds": time.perf_counter() - start, "cpu": time.process_time() - start_cpu}))
"""

DISPATCHER = """
import datetime as dt, json, signal, sys, threading, time
# First of all: the benchmark may send SIGTERM before this process has done anything (a
# small run can be over by then), and that must stop it gracefully, never kill it.
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
from bot import create_app
from bot.dispatch import DispatcherOptions, run_dispatcher
app = create_app()
start_cpu = time.process_time()
options = DispatcherOptions(threads=int(sys.argv[2]), reconcile_every=3600)
report = run_dispatcher(app, sys.argv[1], poll_seconds=0.02, options=options, stop_event=stop)
print(json.dumps({"cpu": time.process_time() - start_cpu, "sent": report.sent}))
"""


def set_up(url: str, count: int, conversation: bool, reset: bool) -> None:
    """Migrate; `count` care workers, each with a pending SMS invitation and a queued row."""
    from sqlalchemy import insert, select

    from storage import db as storage_db
    from storage.models import CareHome, Cohort, Person, Programme
    from surveys.catalogue import ensure_version
    from surveys.instruments import load_library

    engine = storage_db.make_engine(url)
    migrate_fresh(engine, reset)
    now = dt.datetime.now(dt.UTC)
    with storage_db.make_sessionmaker(engine)() as session:
        home = CareHome(key="bench home", name="Bench Home")
        # Sending all day long, whatever the hour the benchmark runs at.
        programme = Programme(key="bench", name="Bench", timezone="UTC", settings={})
        programme.settings = {"send_window": {"start": "00:00", "end": "23:59"}}
        cohort = Cohort(programme=programme, key="c1", name="Cohort 1", homes=[home])
        version = ensure_version(session, load_library()["staff_morale"])
        mode = "conversation" if conversation else "link"
        wave = sms_wave(cohort, now, version, {"roles": ["care_worker"]}, mode, opened=True)
        session.add(programme)
        session.flush()
        session.execute(
            insert(Person),
            [
                {
                    "given_name": f"Worker{i}",
                    "family_name": "Bench",
                    "role": "care_worker",
                    "care_home_id": home.id,
                    "mobile": f"+447700{i:06d}",
                    "active_from": dt.date(2020, 1, 1),
                }
                for i in range(count)
            ],
        )
        people = session.scalars(select(Person.id).order_by(Person.id)).all()
        queue_texts(session, wave.id, version.id, people, now, not_before=now)
        session.commit()
    vacuum_analyze(engine)
    engine.dispose()


def _env(url: str, base_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": url,
        "PUBLIC_BASE_URL": "https://surveys.example.org",
        "SECRET_KEY": "bench-secret-key-0123456789",
        "INSTANCE_PATH": tempfile.mkdtemp(prefix="carepulse-bench-"),
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_FROM_NUMBER": TWILIO_NUMBER,
        "TWILIO_MESSAGING_SERVICE_SID": "",
        "TWILIO_API_BASE_URL": base_url,
        "SEND_RATE_PER_SECOND": "off",
        "SMTP_HOST": "",
        "PYTHONPATH": str(ROOT),
    }


def _child_cpu(process: subprocess.Popen[str]) -> tuple[int, float]:
    """Wait for a child; its exit status and CPU seconds (user + system, from wait4)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


def plain_loop(env: dict[str, str], count: int, fake: Any) -> dict[str, float]:
    """The SDK alone, one message at a time, in its own process."""
    body = "Hi Worker, a short survey for Bench Home: https://surveys.example.org/s/" + "x" * 32
    before = len(fake.messages)
    own = time.process_time()
    process = subprocess.Popen(
        [sys.executable, "-c", PLAIN_LOOP, str(count), body],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    out = process.stdout.read()
    code, cpu = _child_cpu(process)
    if code != 0:
        raise SystemExit(f"bench: the plain loop failed ({code})")
    result = json.loads(out)
    sent = len(fake.messages) - before
    return {
        "sent": sent,
        "seconds": result["seconds"],
        "rate": sent / result["seconds"],
        "cpu_per_message": result["cpu"] / sent,
        "process_cpu_per_message": cpu / sent,
        "fake_cpu_per_message": (time.process_time() - own) / sent,
    }


def dispatcher_run(
    env: dict[str, str], url: str, count: int, processes: int, threads: int, fake: Any
) -> dict[str, float]:
    """`processes` dispatchers until every queued row is sent; wall time from the first send."""
    from sqlalchemy import func, select

    from storage import db as storage_db
    from storage.models import OutboxItem

    engine = storage_db.make_engine(url)
    before = len(fake.messages)
    children = [
        subprocess.Popen(
            [sys.executable, "-c", DISPATCHER, f"bench-{i}", str(threads)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(processes)
    ]
    sent_rows = select(func.count()).select_from(OutboxItem).where(OutboxItem.status == "sent")
    with engine.connect() as conn:
        while not conn.scalar(sent_rows):  # the clock starts with the first message sent
            conn.rollback()
            time.sleep(0.005)
        conn.rollback()
        start = time.perf_counter()
        own = time.process_time()
        while True:
            left = conn.scalar(
                select(func.count())
                .select_from(OutboxItem)
                .where(OutboxItem.status.in_(("queued", "sending")))
            )
            conn.rollback()
            if not left:
                break
            time.sleep(0.05)
    seconds = time.perf_counter() - start
    fake_cpu = time.process_time() - own
    for child in children:
        child.send_signal(signal.SIGTERM)
    cpu = 0.0
    reported = 0.0
    for child in children:
        assert child.stdout is not None
        out = child.stdout.read()
        code, used = _child_cpu(child)
        if code != 0:
            raise SystemExit(f"bench: a dispatcher failed ({code})")
        cpu += used
        reported += json.loads(out.strip().splitlines()[-1])["cpu"]
    engine.dispose()
    sent = len(fake.messages) - before
    return {
        "sent": sent,
        "seconds": seconds,
        "rate": sent / seconds,
        "cpu_per_message": reported / sent,
        "process_cpu_per_message": cpu / sent,
        "fake_cpu_per_message": fake_cpu / sent,
    }


def main(argv: list[str] | None = None) -> int:
    """Set up, run both, print the table; see the module docstring."""
    from tests.support.twilio_server import FakeTwilio

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("CAREPULSE_PG_URL"))
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--plain-messages", type=int, help="default: --messages")
    parser.add_argument("--dispatchers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--conversation", action="store_true")
    parser.add_argument("--reset", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if not args.database_url:
        raise SystemExit("bench: no database; run under scripts/with-postgres or --database-url")
    url = psycopg_url(args.database_url)
    plain_count = args.plain_messages or args.messages

    started = time.perf_counter()
    set_up(url, args.messages, args.conversation, args.reset)
    print(f"set-up: {args.messages} invitations queued in {time.perf_counter() - started:.1f} s")
    with FakeTwilio(ACCOUNT_SID, AUTH_TOKEN) as fake:
        env = _env(url, fake.base_url)
        latency = args.latency_ms / 1000
        if latency:
            fake.hang_next(latency, times=plain_count, method="POST")
        plain = plain_loop(env, plain_count, fake)
        if latency:
            fake.hang_next(latency, times=args.messages, method="POST")
        dispatched = dispatcher_run(env, url, args.messages, args.dispatchers, args.threads, fake)
        to = Counter(m["to"] for m in fake.messages if m["to"].startswith("+447700"))
    once = len(to) == args.messages and set(to.values()) == {1}
    ratio = dispatched["rate"] / plain["rate"]
    _print(args, plain, dispatched, ratio, once)
    if not once:
        return 1
    return 3 if args.check and ratio < RATIO_TARGET else 0


def _print(
    args: Any, plain: dict[str, float], dispatched: dict[str, float], ratio: float, once: bool
) -> None:
    print(
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}), Python "
        f"{platform.python_version()}, load average {os.getloadavg()[0]:.1f}; provider "
        f"latency {args.latency_ms:g} ms; "
        + ("SMS conversations" if args.conversation else "link texts")
    )
    print(f"{'':34} {'messages':>9} {'msg/s':>8} {'CPU ms/msg':>11} {'fake CPU ms/msg':>16}")
    # CPU: the measuring process's own, after its start-up (imports, app, SDK client).
    for name, row in (
        ("plain SDK loop (1 process)", plain),
        (f"dispatcher ({args.dispatchers} proc x {args.threads} thr)", dispatched),
    ):
        print(
            f"{name:34} {row['sent']:>9.0f} {row['rate']:>8.1f} "
            f"{row['cpu_per_message'] * 1000:>11.2f} "
            f"{row['fake_cpu_per_message'] * 1000:>16.2f}"
        )
    verdict = "met" if ratio >= RATIO_TARGET else "MISSED"
    print(f"ratio dispatcher / plain loop: {ratio:.2f}x (target >= {RATIO_TARGET:g}x: {verdict})")
    print("every message sent exactly once" if once else "DUPLICATES OR LOSSES: see above")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"(this process, incl. the fake Twilio: {usage.ru_utime + usage.ru_stime:.1f} s CPU)")


if __name__ == "__main__":
    raise SystemExit(main())
