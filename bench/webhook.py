"""Benchmark of the inbound-SMS webhook (`POST /twilio/sms`) under load, on loopback only.

    scripts/with-postgres .venv/bin/python bench/webhook.py
    scripts/with-postgres .venv/bin/python bench/webhook.py --rate 150 --seconds 20
    scripts/with-postgres .venv/bin/python bench/webhook.py --profile 300

1. Set-up: migrates the PostgreSQL database (`CAREPULSE_PG_URL`, set by scripts/with-postgres,
   or `--database-url`), inserts 100 care homes x 100 staff (UK mobiles +447700900000 up),
   one programme whose wave is open now and asks `appraisal_360` (11 items) of every
   staff member by SMS conversation, opens the wave (`surveys.invitations.open_wave`) and
   starts every conversation (`surveys.sms_inbox.opening`, status `sent`): 10,000 people,
   each with a real 11-step conversation to move on. Then VACUUM ANALYZE (a steady state).
2. Server: gunicorn as the Procfile runs it (2 sync workers) on 127.0.0.1 at a free port,
   serving `bench.trivial_app:app` (carepulse's app plus `GET /bench/ping`), with Twilio
   configured (REST pointed at a closed loopback port: the webhook sends nothing by REST).
3. Open loop: a load generator in another process sends signed webhooks at a fixed arrival
   rate (default 100/s for 30 s) from random people with plausible answers ("4", "four",
   "3 or 4", "SKIP" ...), each with a fresh MessageSid. Latency is measured from each
   request's scheduled time, so a slow server cannot hide its queue.
4. Closed loop: 8 clients (2 processes x 4 threads) as fast as they can for 10 s, first
   against the webhook, then against `/bench/ping`; the ratio of the two is the figure.
5. Report: a table, and the targets (p99 < 50 ms at 100 req/s; webhook throughput at
   least 1/3 of the trivial endpoint's). Exit status 0 when the run was valid (answers
   stored, no 5xx), 1 when not; with --check, 3 when a target was missed.

`--profile N` skips the server: after the set-up it runs N webhooks through Flask's test
client in this process timing every SQL statement, then N more under cProfile, and prints
where the time goes.

The database must be empty (or pass --reset, which DROPS every table in it): this is for
throwaway databases such as scripts/with-postgres's.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import multiprocessing as mp
import os
import platform
import queue
import random
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

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
    server_version,
    sms_wave,
    vacuum_analyze,
)
from bench.harness import (  # noqa: E402
    ACCOUNT_SID,
    ANSWERS,
    OTHER_PROCESSES,
    PING_PATH,
    TWILIO_NUMBER,
    WEBHOOK_PATH,
    Connection,
    CpuSampler,
    Gunicorn,
    free_port,
    p99_timeline,
    percentile,
    run_as_script,
    signed_webhook,
)

P99_TARGET_MS = 50.0
RATIO_TARGET = 1 / 3


# --------------------------------------------------------------------------- set-up


def set_up_database(url: str, homes: int, staff: int, reset: bool) -> dict[str, Any]:
    """Migrate, load homes and people, open the wave and start every conversation."""
    from sqlalchemy import func, insert, select

    from storage import db as storage_db
    from storage.models import CareHome, Cohort, Invitation, Person, Programme
    from surveys.catalogue import ensure_version
    from surveys.instruments import load_library

    timings: dict[str, float] = {}
    started = time.perf_counter()
    engine = storage_db.make_engine(url)
    migrate_fresh(
        engine,
        reset,
        "bench: the database already has tables ({tables} ...); "
        "use a fresh one (scripts/with-postgres) or pass --reset to DROP them all",
    )
    timings["migrate"] = time.perf_counter() - started

    started = time.perf_counter()
    numbers = mobiles(homes * staff)
    with engine.begin() as conn:
        conn.execute(
            insert(CareHome),
            [{"key": f"bench home {h:03d}", "name": f"Bench Home {h:03d}"} for h in range(homes)],
        )
        home_ids = list(conn.scalars(select(CareHome.id).order_by(CareHome.id)))
        conn.execute(
            insert(Person),
            [
                {
                    "external_id": f"B{i:06d}",
                    "given_name": f"Worker{i}",
                    "family_name": "Bench",
                    "role": STAFF_ROLES[i % len(STAFF_ROLES)],
                    "care_home_id": home_ids[i // staff],
                    "mobile": number,
                    "active_from": dt.date(2020, 1, 1),
                }
                for i, number in enumerate(numbers)
            ],
        )
    timings["insert people"] = time.perf_counter() - started

    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    library = load_library()
    factory = storage_db.make_sessionmaker(engine)
    with factory() as session:
        programme = Programme(key="bench", name="Bench programme", settings={})
        cohort = Cohort(programme=programme, key="c1", name="Cohort 1")
        version = ensure_version(session, library["appraisal_360"])
        wave = sms_wave(cohort, now, version, {"roles": sorted(set(STAFF_ROLES))}, "conversation")
        cohort.homes = list(session.scalars(select(CareHome).order_by(CareHome.id)))
        session.add(programme)
        session.flush()
        report = open_conversations(session, wave, now)
        session.commit()
        sent = session.scalar(
            select(func.count()).select_from(Invitation).where(Invitation.status == "sent")
        )
    timings["open wave + start conversations"] = time.perf_counter() - started
    started = time.perf_counter()
    vacuum_analyze(engine)
    timings["vacuum analyze"] = time.perf_counter() - started
    engine.dispose()
    if report.created != len(numbers) or sent != len(numbers):
        raise SystemExit(f"bench: expected {len(numbers)} invitations sent, got {sent}")
    return {"numbers": numbers, "timings": timings, "invitations": sent}


def db_counts(url: str) -> dict[str, int]:
    """Rows written by the webhook so far."""
    from sqlalchemy import func, select

    from storage import db as storage_db
    from storage.models import Answer, Message, Response

    engine = storage_db.make_engine(url)
    try:
        with engine.connect() as conn:

            def count(model: Any, *where: Any) -> int:
                return conn.scalar(select(func.count()).select_from(model).where(*where)) or 0

            return {
                "answers": count(Answer),
                "answers_with_value": count(Answer, Answer.value.is_not(None)),
                "responses_completed": count(Response, Response.completed_at.is_not(None)),
                "inbound": count(Message, Message.direction == "in"),
                "outbound": count(Message, Message.direction == "out"),
            }
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- requests


@dataclass
class LoadSpec:
    """What one load-generator process does (picklable for multiprocessing)."""

    mode: str  # "open" or "closed"
    host: str
    port: int
    public_url: str
    token: str
    numbers: list[str]
    path: str = WEBHOOK_PATH
    rate: float = 100.0
    seconds: float = 30.0
    threads: int = 32
    timeout: float = 10.0
    seed: int = 0
    start_at: float = 0.0  # time.time() at which to start, so processes start together


@dataclass
class LoadResult:
    """Per-request (offset from start, latency in seconds, status) and the run's span."""

    samples: list[tuple[float, float, int]] = field(default_factory=list)
    duration: float = 0.0
    late_dispatches: int = 0
    unanswered: int = 0  # still waiting when the generator gave up (open loop)


def _request_for(spec: LoadSpec, rng: random.Random) -> tuple[str, bytes | None, dict]:
    if spec.path == WEBHOOK_PATH:
        body, headers = signed_webhook(
            spec.token, spec.public_url, rng.choice(spec.numbers), rng.choice(ANSWERS)
        )
        return "POST", body, headers
    return "GET", None, {}


def _open_loop(spec: LoadSpec) -> LoadResult:
    """Requests at fixed arrival times i/rate, whatever the server's pace (open loop)."""
    rng = random.Random(spec.seed)
    total = max(1, int(spec.rate * spec.seconds))
    prepared = [_request_for(spec, rng) for _ in range(total)]  # signing is not timed
    jobs: queue.SimpleQueue[tuple[int, float] | None] = queue.SimpleQueue()
    samples: list[tuple[float, float, int] | None] = [None] * total

    def worker() -> None:
        conn = Connection(spec.host, spec.port, spec.timeout)
        while (job := jobs.get()) is not None:
            i, due = job
            method, body, headers = prepared[i]
            status = conn.request(method, spec.path, body, headers)
            samples[i] = (due - t0, time.perf_counter() - due, status)
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(spec.threads)]
    for thread in threads:
        thread.start()
    _sleep_until_wall(spec.start_at)
    t0 = time.perf_counter()
    late = 0
    for i in range(total):
        due = t0 + i / spec.rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.005:
            late += 1  # the generator itself fell behind (reported, should stay 0)
        jobs.put((i, due))
    for _ in threads:
        jobs.put(None)
    give_up = time.perf_counter() + spec.timeout + 30  # a backlog may take a while to drain
    for thread in threads:
        thread.join(max(0.0, give_up - time.perf_counter()))
    done = [s for s in samples if s is not None]
    end = max((s[0] + s[1] for s in done), default=0.0)
    return LoadResult(done, end, late, unanswered=total - len(done))


def _closed_loop(spec: LoadSpec) -> LoadResult:
    """`threads` clients, each sending its next request as soon as the last one returns."""
    _sleep_until_wall(spec.start_at)
    t0 = time.perf_counter()
    deadline = t0 + spec.seconds
    per_thread: list[list[tuple[float, float, int]]] = [[] for _ in range(spec.threads)]

    def client(k: int) -> None:
        rng = random.Random(spec.seed * 1000 + k)
        conn = Connection(spec.host, spec.port, spec.timeout)
        out = per_thread[k]
        while (now := time.perf_counter()) < deadline:
            method, body, headers = _request_for(spec, rng)
            sent = time.perf_counter()
            status = conn.request(method, spec.path, body, headers)
            out.append((now - t0, time.perf_counter() - sent, status))
        conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(spec.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(spec.seconds + spec.timeout + 5)
    return LoadResult([s for out in per_thread for s in out], time.perf_counter() - t0)


def _sleep_until_wall(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


def _generator_main(spec: LoadSpec, results: Any) -> None:
    """Entry point of a load-generator process: run, then send the result back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    run = _open_loop if spec.mode == "open" else _closed_loop
    results.put(run(spec))


def run_generators(specs: list[LoadSpec], limit: float) -> list[LoadResult]:
    """Run each spec in its own process (spawned, so no state is shared); collect results."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    start_at = time.time() + 1.5  # time for the processes to start and prepare
    procs = []
    try:
        for spec in specs:
            spec.start_at = start_at
            proc = ctx.Process(target=_generator_main, args=(spec, results), daemon=True)
            proc.start()
            procs.append(proc)
        collected = []
        deadline = time.monotonic() + limit
        for _ in procs:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                collected.append(results.get(timeout=remaining))
            except queue.Empty:
                raise RuntimeError(f"load generator gave no result within {limit:.0f}s") from None
        for proc in procs:
            proc.join(5)
        return collected
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(1)


# --------------------------------------------------------------------------- figures


@dataclass
class Summary:
    requests: int
    ok: int
    errors: int
    server_errors: int
    statuses: Counter
    rate: float
    p50: float
    p95: float
    p99: float
    max: float


def summarise(results: list[LoadResult], seconds: float | None = None) -> Summary:
    samples = [s for r in results for s in r.samples]
    latencies = sorted(s[1] * 1000 for s in samples)
    statuses = Counter(s[2] for s in samples)
    ok = statuses.get(200, 0)
    unanswered = sum(r.unanswered for r in results)
    if unanswered:
        statuses[-1] += unanswered
    span = seconds or max((r.duration for r in results), default=0.0)
    return Summary(
        requests=len(samples) + unanswered,
        ok=ok,
        errors=len(samples) + unanswered - ok,
        server_errors=sum(n for status, n in statuses.items() if status >= 500),
        statuses=statuses,
        rate=ok / span if span else 0.0,
        p50=percentile(latencies, 50),
        p95=percentile(latencies, 95),
        p99=percentile(latencies, 99),
        max=latencies[-1] if latencies else math.nan,
    )


OURS = "benchmark"
"""CpuSampler's label for this process, gunicorn, the generators and the PostgreSQL server."""


def _cpu_sampler(postmaster: int | None) -> CpuSampler:
    """The CPU of the benchmark's processes (OURS) and of the machine's others."""
    return CpuSampler({OURS: {os.getpid()} | ({postmaster} if postmaster else set())})


def _cpu_text(cpu: CpuSampler) -> str:
    """How much CPU other processes took while the benchmark ran, against its own."""
    if not cpu.used.get(OTHER_PROCESSES):
        return "n/a"
    return (
        f"{cpu.mean(OTHER_PROCESSES):.2f} cores on average, {cpu.peak(OTHER_PROCESSES):.2f} "
        f"at most (the benchmark's own: {cpu.mean(OURS):.2f})"
    )


def _status_text(statuses: Counter) -> str:
    bad = {status: n for status, n in statuses.items() if status != 200}
    if not bad:
        return "none"
    names = {0: "connection error", -1: "no answer in time"}
    return ", ".join(f"{n} x {names.get(status, status)}" for status, n in sorted(bad.items()))


# --------------------------------------------------------------------------- profiling


def profile(url: str, numbers: list[str], requests: int, top: int) -> None:
    """Run `requests` webhooks through Flask's test client in-process: SQL timed, then cProfile."""
    import cProfile
    import pstats

    from sqlalchemy import event

    from bot import create_app

    token = "bench-" + secrets.token_hex(16)
    public = "http://127.0.0.1:5000"
    with tempfile.TemporaryDirectory(prefix="carepulse-bench-") as tmp:
        app = create_app(
            {
                "DATABASE_URL": url,
                "PUBLIC_BASE_URL": public,
                "SECRET_KEY": secrets.token_urlsafe(32),
                "INSTANCE_PATH": tmp,
                "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
                "TWILIO_AUTH_TOKEN": token,
                "TWILIO_FROM_NUMBER": TWILIO_NUMBER,
                "TWILIO_API_BASE_URL": f"http://127.0.0.1:{free_port()}",
            }
        )
        client = app.test_client()
        rng = random.Random(7)

        def batch(n: int) -> list[tuple[bytes, dict]]:
            return [
                signed_webhook(token, public, rng.choice(numbers), rng.choice(ANSWERS))
                for _ in range(n)
            ]

        for body, headers in batch(30):  # warm-up: imports, pool, statement caches
            client.post(WEBHOOK_PATH, data=body, headers=headers)

        # Pass 1, no profiler: real time per request, and every SQL statement timed.
        engine = app.extensions["carepulse.engine"]
        sql: dict[str, list[float]] = {}

        def before(conn: Any, *_args: Any) -> None:
            conn.info["bench.t"] = time.perf_counter()

        def after(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
            entry = sql.setdefault(" ".join(statement.split()), [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - conn.info["bench.t"]

        event.listen(engine, "before_cursor_execute", before)
        event.listen(engine, "after_cursor_execute", after)
        prepared = batch(requests)
        started = time.perf_counter()
        statuses: Counter = Counter()
        for body, headers in prepared:
            statuses[client.post(WEBHOOK_PATH, data=body, headers=headers).status_code] += 1
        wall = time.perf_counter() - started
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
        count = sum(n for n, _ in sql.values())
        db = sum(t for _, t in sql.values())
        print(f"\nProfile: {requests} webhooks through the Flask test client, in-process")
        print(f"  statuses {dict(statuses)}; {wall / requests * 1000:.2f} ms per request, of")
        print(f"  which {db / requests * 1000:.2f} ms in {count / requests:.1f} SQL statements")
        print("\n  SQL statements per request, by time:")
        for text, (n, secs) in sorted(sql.items(), key=lambda kv: -kv[1][1])[:top]:
            print(f"    {n / requests:5.2f} x {secs / requests * 1000:6.3f} ms  {_short_sql(text)}")

        # Pass 2, under cProfile: where the Python time goes.
        prepared = batch(requests)
        profiler = cProfile.Profile()
        statuses = Counter()
        started = time.perf_counter()
        profiler.enable()
        for body, headers in prepared:
            statuses[client.post(WEBHOOK_PATH, data=body, headers=headers).status_code] += 1
        profiler.disable()
        wall = time.perf_counter() - started

        stats = pstats.Stats(profiler)
        total = sum(entry[2] for entry in stats.stats.values())  # type: ignore[attr-defined]
        print(f"\n  Under cProfile (which slows Python code down): statuses {dict(statuses)},")
        print(f"  {wall / requests * 1000:.2f} ms per request; {total:.2f} s of profiled time")
        print("\n  Own time by area (tottime summed per package or project module):")
        for area, secs in _by_area(stats):
            print(f"    {area:<42} {secs / requests * 1000:6.2f} ms/req {secs / total:6.1%}")
        print(f"\n  The project's functions by cumulative time (top {top}):")
        stats.sort_stats("cumulative").print_stats(f"{ROOT}/(bot|surveys|storage)/", top)
        print(f"  Top {top} by cumulative time:")
        stats.sort_stats("cumulative").print_stats(top)
        print(f"  Top {top} by own time:")
        stats.sort_stats("tottime").print_stats(top)


def _short_sql(statement: str) -> str:
    """The statement's verb and table, e.g. "SELECT ... FROM invitations JOIN waves"."""
    words = statement.split()
    verb = words[0].upper() if words else ""
    if verb == "SELECT" and " FROM " in statement:
        rest = statement.split(" FROM ", 1)[1]
        where = rest.split(" WHERE ", 1)
        tail = " WHERE " + where[1][:70] if len(where) > 1 else ""
        return f"SELECT ... FROM {where[0][:60]}{tail}"
    return statement[:110]


def _by_area(stats: Any) -> list[tuple[str, float]]:
    areas: Counter = Counter()
    for (filename, _line, _name), entry in stats.stats.items():
        areas[_area(filename)] += entry[2]
    return areas.most_common(14)


def _area(filename: str) -> str:
    path = filename.replace("\\", "/")
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    for package in ("bot", "surveys", "storage", "reports"):
        if f"/{package}/" in path and str(ROOT) in path:
            return f"{package}/{Path(path).name}"
    if path.startswith("<") or path == "~":
        return "builtins (C: sockets, hashing, json ...)"
    return "stdlib/" + Path(path).name


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/webhook.py",
        description="Benchmark POST /twilio/sms under load (run under scripts/with-postgres).",
    )
    add_database_arguments(parser)
    parser.add_argument("--rate", type=float, default=100.0, help="open-loop req/s (100)")
    parser.add_argument("--seconds", type=float, default=30.0, help="open-loop duration (30)")
    parser.add_argument("--threads", type=int, default=32, help="open-loop sender threads (32)")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients (8)")
    parser.add_argument(
        "--client-processes", type=int, default=2, help="processes the clients are spread on (2)"
    )
    parser.add_argument(
        "--max-seconds", type=float, default=10.0, help="closed-loop duration per endpoint (10)"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (2, Procfile)")
    parser.add_argument("--homes", type=int, default=100, help="care homes (100)")
    parser.add_argument("--staff", type=int, default=100, help="staff per home (100)")
    parser.add_argument("--warmup", type=int, default=40, help="untimed requests first (40)")
    parser.add_argument(
        "--profile", type=int, metavar="N", help="profile N webhooks in-process instead"
    )
    parser.add_argument("--top", type=int, default=25, help="rows per profile listing (25)")
    parser.add_argument("--check", action="store_true", help="exit 3 when a target is missed")
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("no database: run under scripts/with-postgres or pass --database-url")
    if args.rate <= 0 or args.seconds <= 0 or args.max_seconds <= 0:
        parser.error("--rate, --seconds and --max-seconds must be positive")
    if args.clients < 1 or args.client_processes < 1 or args.threads < 1:
        parser.error("--clients, --client-processes and --threads must be at least 1")
    return args


def _closed_specs(args: argparse.Namespace, base: LoadSpec, path: str) -> list[LoadSpec]:
    procs = min(args.client_processes, args.clients)
    specs = []
    for k in range(procs):
        threads = args.clients // procs + (1 if k < args.clients % procs else 0)
        specs.append(
            replace(
                base,
                mode="closed",
                path=path,
                threads=threads,
                seconds=args.max_seconds,
                seed=100 + k,
            )
        )
    return specs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = psycopg_url(args.database_url)
    began = time.perf_counter()
    print(
        f"bench: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), "
        f"Python {platform.python_version()}, PostgreSQL {server_version(url).split()[0]}, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"bench: set-up: {args.homes} homes x {args.staff} staff, appraisal_360 by SMS ...")
    setup = set_up_database(url, args.homes, args.staff, args.reset)
    numbers = setup["numbers"]
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in setup["timings"].items())
    print(f"bench: {setup['invitations']} conversations started ({steps})")

    if args.profile:
        profile(url, numbers, args.profile, args.top)
        return 0

    token = "bench-" + secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="carepulse-bench-") as tmp:
        server = Gunicorn(url, token, Path(tmp), args.workers)
        try:
            return _run(args, url, numbers, server, token, began)
        finally:
            server.stop()


def _run(
    args: argparse.Namespace,
    url: str,
    numbers: list[str],
    server: Gunicorn,
    token: str,
    began: float,
) -> int:
    server.start()
    print(f"bench: gunicorn on {server.url}, {args.workers} sync workers (bench.trivial_app:app)")
    base = LoadSpec(
        mode="open",
        host="127.0.0.1",
        port=server.port,
        public_url=server.url,
        token=token,
        numbers=numbers,
        timeout=10.0,
    )

    # Warm-up (untimed): both workers import, connect and fill their statement caches.
    rng = random.Random(1)
    conn = Connection("127.0.0.1", server.port, 10.0)
    warm: Counter = Counter()
    for _ in range(args.warmup):
        for path in (WEBHOOK_PATH, PING_PATH):
            method, body, headers = _request_for(replace(base, path=path), rng)
            warm[conn.request(method, path, body, headers)] += 1
    conn.close()
    if warm.get(200, 0) != 2 * args.warmup:
        print(f"bench: warm-up statuses {dict(warm)}:\n{server.log_tail()}", file=sys.stderr)
        return 1

    before = db_counts(url)
    postmaster = postmaster_pid(url)
    print(f"bench: open loop, {args.rate:g} req/s for {args.seconds:g}s ...")
    spec = replace(base, rate=args.rate, seconds=args.seconds, threads=args.threads, seed=2)
    with _cpu_sampler(postmaster) as open_cpu:
        (open_result,) = run_generators([spec], limit=args.seconds + 60)
    after = db_counts(url)
    target = summarise([open_result])
    answered = len(open_result.samples)
    target.rate = answered / open_result.duration if open_result.duration else 0.0

    closed: dict[str, Summary] = {}
    cpu = {"open": open_cpu}
    for name, path in (("webhook", WEBHOOK_PATH), ("ping", PING_PATH)):
        print(f"bench: closed loop, {args.clients} clients on {path} for {args.max_seconds:g}s ...")
        with _cpu_sampler(postmaster) as cpu[name]:
            results = run_generators(_closed_specs(args, base, path), limit=args.max_seconds + 60)
        closed[name] = summarise(results, args.max_seconds)

    stored = after["answers"] - before["answers"]
    report(args, target, open_result, closed, cpu, before, after, time.perf_counter() - began)
    valid = stored > 0 and target.server_errors == 0 and closed["webhook"].server_errors == 0
    if not valid:
        print("bench: INVALID RUN: no answers stored or 5xx answers; gunicorn's log:")
        print(server.log_tail())
        return 1
    ratio = closed["webhook"].rate / closed["ping"].rate if closed["ping"].rate else 0.0
    met = target.p99 < P99_TARGET_MS and ratio >= RATIO_TARGET
    return 3 if args.check and not met else 0


def report(
    args: argparse.Namespace,
    target: Summary,
    open_result: LoadResult,
    closed: dict[str, Summary],
    cpu: dict[str, CpuSampler],
    before: dict[str, int],
    after: dict[str, int],
    elapsed: float,
) -> None:
    delta = {k: after[k] - before[k] for k in after}
    web, ping = closed["webhook"], closed["ping"]
    ratio = web.rate / ping.rate if ping.rate else 0.0
    line = "-" * 74
    print(f"\n{line}\nInbound SMS webhook, open loop: POST {WEBHOOK_PATH} at {args.rate:g} req/s "
          f"for {args.seconds:g} s\n{line}")  # fmt: skip
    rows = [
        ("requests sent", f"{target.requests}"),
        ("achieved rate", f"{target.rate:.1f} req/s"),
        ("latency p50 / p95 / p99", f"{target.p50:.1f} / {target.p95:.1f} / {target.p99:.1f} ms"),
        ("latency max", f"{target.max:.1f} ms"),
        ("non-200 responses", f"{target.errors} ({_status_text(target.statuses)})"),
        ("5xx responses", f"{target.server_errors}"),
        ("inbound texts stored", f"{delta['inbound']}"),
        (
            "answers stored",
            f"{delta['answers']} ({delta['answers_with_value']} with a value, rest SKIP/left)",
        ),  # fmt: skip
        ("conversations completed", f"{delta['responses_completed']}"),
        ("replies logged", f"{delta['outbound']}"),
        ("generator late dispatches", f"{open_result.late_dispatches}"),
        ("p99 per 5 s window", p99_timeline(open_result.samples)),
        ("CPU used by other processes", _cpu_text(cpu["open"])),
        (
            "CPU per request",
            f"{cpu['open'].mean(OURS) / max(target.rate, 1e-9) * 1000:.1f} ms "
            "(gunicorn + PostgreSQL + generator)",
        ),  # fmt: skip
    ]
    for label, value in rows:
        print(f"  {label:<28} {value}")
    print(f"{line}\nMax throughput, closed loop: {args.clients} clients, {args.max_seconds:g} s "
          f"per endpoint\n{line}")  # fmt: skip
    print(f"  {'endpoint':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'requests':>9} "
          f"{'non-200':>8}")  # fmt: skip
    for label, s in ((f"POST {WEBHOOK_PATH}", web), (f"GET {PING_PATH}", ping)):
        print(f"  {label:<22} {s.rate:8.1f} {s.p50:8.1f} {s.p99:8.1f} {s.requests:9d} "
              f"{s.errors:8d}")  # fmt: skip
    print(f"  ratio webhook / trivial: {ratio:.3f} (1/{1 / ratio:.1f})" if ratio else "")
    print(f"  CPU used by other processes, webhook run: {_cpu_text(cpu['webhook'])}")
    print(f"  CPU used by other processes, ping run: {_cpu_text(cpu['ping'])}")
    print(f"{line}\nTargets\n{line}")
    p99_ok = target.p99 < P99_TARGET_MS
    print(f"  p99 < {P99_TARGET_MS:g} ms at {args.rate:g} req/s    {target.p99:7.1f} ms   "
          f"{'MET' if p99_ok else 'MISSED'}")  # fmt: skip
    print(f"  throughput ratio >= 1/3       {ratio:7.3f}      "
          f"{'MET' if ratio >= RATIO_TARGET else 'MISSED'}")  # fmt: skip
    print(f"{line}\n  total run time {elapsed:.0f} s; {os.cpu_count()} cores shared by gunicorn, "
          f"PostgreSQL and the load generator")  # fmt: skip


if __name__ == "__main__":
    run_as_script(main)
