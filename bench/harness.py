"""The load harness the benchmarks share: the app under gunicorn, signed inbound texts and
a client connection to send them on, CPU per process tree, latency percentiles, and how a
benchmark runs as a script. (Their database is bench/database.py's.)

The benchmarks import it as `bench.harness`, after putting the project's root first on
sys.path. Its own imports are the standard library's (Twilio's request validator and the
test support's inbound form are imported where a text is signed): load generators import
this module in fresh processes, which must be ready before the load starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent

ACCOUNT_SID = "AC" + "b" * 32
TWILIO_NUMBER = "+447700999999"
WEBHOOK_PATH = "/twilio/sms"
PING_PATH = "/bench/ping"
# What care workers reply to "Q3/11 My manager ... Reply 1-5 or SKIP": mostly a number,
# sometimes words, now and then something unclear (re-asked, nothing stored) or SKIP.
ANSWERS = ["4", "4", "5", "3", "2", "1", "4 ", "four", "Five", "agree", "Strongly agree",
           "3 or 4", "SKIP", "skip", "5!", "not sure", "4 thanks"]  # fmt: skip


# --------------------------------------------------------------------------- running


def run_as_script(main: Callable[[], int]) -> NoReturn:
    """Exit with `main()`'s status. SIGTERM and SIGHUP become SystemExit, so the `finally`
    blocks stop the servers and processes the benchmark started; Ctrl-C exits 130."""

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # what it started was stopped on the way out
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)


# --------------------------------------------------------------------------- requests


def signed_webhook(token: str, public_url: str, number: str, body: str) -> tuple[bytes, dict]:
    """A POST body and headers for one inbound SMS, signed as Twilio signs it."""
    from twilio.request_validator import RequestValidator

    from tests.support.twilio_forms import inbound_form

    sid = "SM" + uuid.uuid4().hex
    params = inbound_form(sid, ACCOUNT_SID, number, TWILIO_NUMBER, body)
    signature = RequestValidator(token).compute_signature(public_url + WEBHOOK_PATH, params)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "User-Agent": "TwilioProxy/1.1",
        "Accept": "*/*",
        "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
        "X-Twilio-Signature": signature,
    }
    return urlencode(params).encode(), headers


class Connection:
    """One client's HTTP/1.1 connection, kept alive while the server allows (gunicorn's
    sync workers close after every response, so then it reconnects, as a proxy would)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None, headers: dict) -> int:
        """The response's status; 0 for a connection error or timeout."""
        for attempt in range(2):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                response.read()
                if response.will_close:
                    self.close()
                return response.status
            except (http.client.HTTPException, OSError):
                self.close()
                if not reused or attempt:  # retry once only when a kept-alive link was stale
                    return 0
        return 0

    def close(self) -> None:
        """Close the connection; the next request opens a new one."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """In a child process (preexec_fn): get SIGTERM if the benchmark dies without cleaning up."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Gunicorn:
    """gunicorn as the Procfile's `web` runs it (2 sync workers), on 127.0.0.1, serving
    `bench.trivial_app:app` (the app plus `GET /bench/ping`), Twilio configured with
    ACCOUNT_SID, `token` and TWILIO_NUMBER."""

    def __init__(self, database_url: str, token: str, workdir: Path, workers: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "gunicorn.log"
        self.workers = workers
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PUBLIC_BASE_URL": self.url,
            "SECRET_KEY": secrets.token_urlsafe(32),
            "INSTANCE_PATH": str(workdir / "instance"),
            "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "TWILIO_AUTH_TOKEN": token,
            "TWILIO_FROM_NUMBER": TWILIO_NUMBER,
            # Nothing listens there: the webhook answers in TwiML and sends nothing by REST.
            "TWILIO_API_BASE_URL": f"http://127.0.0.1:{free_port()}",
            "WEB_CONCURRENCY": str(workers),
        }
        self.env.pop("PORT", None)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start it; return once /healthz and /bench/ping answer 200."""
        cmd = [
            sys.executable, "-m", "gunicorn",
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(self.workers),
            "--worker-class", "sync",
            "--chdir", str(ROOT),
            "--error-logfile", str(self.log),
            "bench.trivial_app:app",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd,
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # our Ctrl-C is handled here, then gunicorn is stopped
            preexec_fn=die_with_parent,  # no threads in this process yet
        )
        self.wait_healthy(timeout)
        if Connection("127.0.0.1", self.port, 2.0).request("GET", PING_PATH, None, {}) != 200:
            raise RuntimeError(f"{PING_PATH} does not answer 200")

    def wait_healthy(self, timeout: float) -> None:
        """Until /healthz answers 200; RuntimeError, with the log's tail, when gunicorn exits
        or is not healthy within `timeout` seconds."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        conn = Connection("127.0.0.1", self.port, 2.0)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited ({self.proc.returncode}):\n{self.log_tail()}")
            if conn.request("GET", "/healthz", None, {}) == 200:
                return
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not healthy within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last `lines` lines of gunicorn's log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL to the whole group after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


# --------------------------------------------------------------------------- machine load


OTHER_PROCESSES = "other processes"
"""CpuSampler's label for the CPU the machine spent outside every part it was given."""


def proc_times() -> dict[int, tuple[int, int]]:
    """{pid: (ppid, utime + stime in clock ticks)} for every process (Linux /proc)."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return out


def busy_ticks() -> int:
    """Clock ticks the machine's CPUs have been busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        cpu = [int(v) for v in f.readline().split()[1:]]
    return sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)  # all but idle and iowait


def process_tree(procs: dict[int, tuple[int, int]], roots: set[int]) -> set[int]:
    """The `roots` (those still running) and all their descendants, by `proc_times`' ppids."""
    members, grew = set(roots) & procs.keys(), True
    while grew:
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in members and pid not in members:
                members.add(pid)
                grew = True
    return members


class CpuSampler:
    """Cores' worth of CPU used by each part of a benchmark, sampled once a second from
    /proc, and by the machine's other processes (OTHER_PROCESSES): on a small shared
    machine, other work running at the same time shows up in the latencies.

    `parts` maps a label to the root pids of its process trees; a process counts for the
    first part whose trees hold it. Use it as a context manager around the measurement.
    """

    def __init__(self, parts: dict[str, set[int]]) -> None:
        self.parts = parts
        self.tick = os.sysconf("SC_CLK_TCK")
        self.used: dict[str, list[float]] = defaultdict(list)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        last = (time.monotonic(), busy_ticks(), proc_times())
        while not self._stop.wait(1.0):
            now = (time.monotonic(), busy_ticks(), proc_times())
            seconds, ours, taken = now[0] - last[0], 0.0, set()
            for label, roots in self.parts.items():
                members = process_tree(now[2], roots) - taken
                taken |= members
                ticks = sum(now[2][p][1] - last[2][p][1] for p in members if p in last[2])
                self.used[label].append(ticks / self.tick / seconds)
                ours += ticks / self.tick
            busy = (now[1] - last[1]) / self.tick
            self.used[OTHER_PROCESSES].append(max(0.0, busy - ours) / seconds)
            last = now

    def mean(self, label: str) -> float:
        """Cores' worth of CPU `label` used on average (NaN before the first sample)."""
        values = self.used.get(label) or [math.nan]
        return sum(values) / len(values)

    def peak(self, label: str) -> float:
        """The most `label` used in one interval (NaN before the first sample)."""
        return max(self.used.get(label) or [math.nan])


# --------------------------------------------------------------------------- figures


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def p99_timeline(samples: Iterable[tuple[float, float, int]], window: float = 5.0) -> str:
    """p99 latency (ms) of the requests scheduled in each `window`-second slice, from
    samples of (offset from the start, latency in seconds, status)."""
    slices: dict[int, list[float]] = {}
    for offset, latency, _status in samples:
        slices.setdefault(int(offset // window), []).append(latency * 1000)
    return " ".join(f"{percentile(sorted(v), 99):.0f}" for _, v in sorted(slices.items())) + " ms"
