"""A PostgreSQL server of a test's own, which the test may stop and start again at will.

The suite's own server (started by scripts/with-postgres) is shared by every test, so a
test that stops its database needs another one. This one is started the same way: the
server binaries from PATH or Debian's /usr/lib/postgresql/<version>/bin, run as the
`postgres` user when we are root (initdb refuses root), listening on 127.0.0.1 only at a
free port, trust authentication. `fsync` is off for speed; `synchronous_commit` stays on,
because an immediate stop must not lose a transaction that reported success (the fault
tests count on exactly that).

    with ThrowawayPostgres() as pg:
        engine = make_engine(pg.url)
        pg.stop()      # as if the server crashed (immediate shutdown)
        pg.start()     # same data, same port
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

__all__ = ["PostgresUnavailable", "ThrowawayPostgres", "find_bindir"]

DATABASE = "carepulse"


class PostgresUnavailable(RuntimeError):
    """The server binaries are missing, or the server could not be set up."""


def find_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres: PATH first, then Debian's, newest
    version first; None when there is none."""
    initdb = shutil.which("initdb")
    candidates = [Path(os.path.realpath(initdb)).parent] if initdb else []
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    for folder in candidates:
        if all((folder / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """A PostgreSQL server in a temporary folder, deleted by `close()` (or the `with` block)."""

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
        self.bindir = bindir
        self.port = _free_port()
        self.root: Path | None = None
        self.running = False

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the test database."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{DATABASE}"

    def _as_postgres(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        args = [str(c) for c in command]
        if os.geteuid() == 0:
            args = ["runuser", "-u", "postgres", "--", *args]
        return subprocess.run(
            args, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
        )

    def _create(self) -> None:
        """initdb into a fresh folder the server's user owns."""
        if os.geteuid() == 0:
            if subprocess.run(["id", "-u", "postgres"], capture_output=True).returncode:
                raise PostgresUnavailable("no `postgres` user to run the server as")
            self.root = Path(tempfile.mkdtemp(prefix="carepulse-fault-pg-", dir="/tmp"))
            shutil.chown(self.root, "postgres", "postgres")
        else:
            self.root = Path(tempfile.mkdtemp(prefix="carepulse-fault-pg-"))
        done = self._as_postgres(
            self.bindir / "initdb",
            *("-D", self.root / "data", "-A", "trust", "-U", "postgres", "--no-sync"),
            *("-E", "UTF8", "--locale=C"),
        )
        if done.returncode:
            raise PostgresUnavailable(f"initdb failed:\n{done.stdout}\n{done.stderr}")

    def start(self) -> ThrowawayPostgres:
        """Start the server (creating it and its database the first time); waits until it
        accepts connections."""
        first = self.root is None
        if first:
            self._create()
        assert self.root is not None
        options = f"-F -k {self.root} -h 127.0.0.1 -p {self.port} -c fsync=off"
        done = self._as_postgres(
            self.bindir / "pg_ctl",
            *("-D", self.root / "data", "-w", "-t", "60", "-o", options),
            *("-l", self.root / "server.log", "start"),
        )
        if done.returncode:
            raise PostgresUnavailable(f"pg_ctl start failed:\n{done.stderr}\n{self.log()}")
        self.running = True
        if first:
            import psycopg

            dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')
        return self

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; `immediate` is a crash as far as clients can tell: every
        connection is cut and open transactions are lost."""
        if not self.running or self.root is None:
            return
        done = self._as_postgres(
            self.bindir / "pg_ctl", "-D", self.root / "data", "-m", mode, "-w", "-t", "30", "stop"
        )
        if done.returncode:
            raise PostgresUnavailable(f"pg_ctl stop failed:\n{done.stderr}")
        self.running = False

    def log(self) -> str:
        """The end of the server's log, for failure messages."""
        if self.root is None:
            return ""
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def close(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self.stop()
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
