"""Rate-limit counts in the application's own database, shared by every process that uses it.

`DatabaseStorage` is a storage for `limits` (the library flask-limiter counts with),
registered as the scheme `database://`. Counts live in the table `rate_limit_counters`
(`storage.models.RateLimitCounter`), so every gunicorn worker counts against one budget
and a restart forgets nothing, with no service besides the database (SQLite or
PostgreSQL).

Each operation runs in short transactions of its own (on PostgreSQL each statement is one,
in autocommit), on a connection of its own from the engine's pool: a rate-limit check never
commits or rolls back anyone else's work.

Atomicity: a count goes up in one statement (an upsert whose `RETURNING` gives the new
count), so increments from any number of processes are never lost. The sliding-window
counter (`acquire_sliding_window_entry`) takes an entry only if the current window's count
still leaves room, checked by the upsert's own `WHERE` under the row's lock: concurrent
requests never take more than the limit. The previous window's count is read just before
(it no longer grows, except for requests that began in it a moment earlier).

Expired counts count as nothing at once and are deleted by `purge_expired`, which the
storage itself runs at most once a `purge_interval` (a minute) while it is counting.

The clock is `time.time` unless the caller gives another (the tests move it by hand);
every process should see the same clock, as every process sharing a Redis store would.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from limits.errors import ConfigurationError
from limits.storage import SlidingWindowCounterSupport, Storage
from limits.storage.base import TimestampedSlidingWindow
from sqlalchemy import Engine, bindparam, case, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.dml import ReturningInsert

from storage.models import RateLimitCounter

log = logging.getLogger(__name__)

DATABASE_STORAGE_URI = "database://"
"""The storage URI meaning "the application's own database" (the engine is handed over as
the storage option `engine`: the URI itself holds nothing)."""

PURGE_INTERVAL = 60.0
"""Seconds between two deletions of expired counts by one storage."""

_TABLE = RateLimitCounter.__table__
_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}

# The statements, built once with bound parameters (building them costs more than running
# them): :key, :now (an aware datetime), :amount, :expires_at, :room.
_LIVE = _TABLE.c.expires_at > bindparam("now")
_COUNT = select(_TABLE.c["count"]).where(_TABLE.c.key == bindparam("key"), _LIVE)
_EXPIRY = select(_TABLE.c.expires_at).where(_TABLE.c.key == bindparam("key"), _LIVE)
_WINDOWS = select(_TABLE.c.key, _TABLE.c["count"]).where(
    _TABLE.c.key.in_(bindparam("keys", expanding=True)), _LIVE
)
_CHECK = select(_TABLE.c.key).limit(1)
_CLEAR = delete(_TABLE).where(_TABLE.c.key.in_(bindparam("keys", expanding=True)))


def _upsert(dialect: str, *, with_room: bool) -> ReturningInsert[tuple[int]]:
    """Add :amount to :key's count and return the new count; a missing or expired count
    starts afresh at :amount, expiring at :expires_at.

    `with_room`: a live count is added to only while it is at most :room (otherwise the
    statement changes nothing and returns no row), checked under the row's lock, so that
    concurrent requests cannot all slip through.
    """
    insert = _INSERTS[dialect](_TABLE).values(
        key=bindparam("key"), count=bindparam("amount"), expires_at=bindparam("expires_at")
    )
    expired = _TABLE.c.expires_at <= bindparam("now")
    # Both SET expressions see the row as it was, so an expired count restarts with its
    # new expiry and a live one keeps the expiry it was given when it started.
    return insert.on_conflict_do_update(
        index_elements=[_TABLE.c.key],
        set_={
            "count": case(
                (expired, insert.excluded["count"]),
                else_=_TABLE.c["count"] + insert.excluded["count"],
            ),
            "expires_at": case((expired, insert.excluded.expires_at), else_=_TABLE.c.expires_at),
        },
        where=or_(expired, _TABLE.c["count"] <= bindparam("room")) if with_room else None,
    ).returning(_TABLE.c["count"])


_UPSERTS = {
    (dialect, with_room): _upsert(dialect, with_room=with_room)
    for dialect in _INSERTS
    for with_room in (False, True)
}


def _at(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC)


def purge_expired(engine: Engine, now: dt.datetime | None = None) -> int:
    """Delete every count that has expired by `now` (default: the current time), in a
    transaction of its own. Returns how many went."""
    now = now or dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        result = conn.execute(delete(RateLimitCounter).where(RateLimitCounter.expires_at <= now))
    return result.rowcount


class DatabaseStorage(Storage, SlidingWindowCounterSupport, TimestampedSlidingWindow):
    """A `limits` storage in the table `rate_limit_counters`, for the fixed-window and
    sliding-window-counter strategies (not the moving window, which keeps every hit).

    Built by `limits.storage.storage_from_string("database://", engine=engine)` (or
    flask-limiter's `storage_uri="database://"` with `storage_options={"engine": engine}`).
    """

    STORAGE_SCHEME = ["database"]

    def __init__(
        self,
        uri: str | None = None,
        wrap_exceptions: bool = False,
        *,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
        purge_interval: float = PURGE_INTERVAL,
        **options: Any,
    ) -> None:
        """Count in `engine`'s database (migrated: the table comes with revision 0007).

        `clock` gives the current time in seconds since the epoch. Raises
        `limits.errors.ConfigurationError` without an engine, or for a database other
        than SQLite or PostgreSQL.
        """
        if engine is None:
            raise ConfigurationError(
                "database:// counts in the application's database: pass its engine as the "
                "storage option `engine`"
            )
        if engine.dialect.name not in _INSERTS:
            raise ConfigurationError(
                f"database:// supports SQLite and PostgreSQL, not {engine.dialect.name}"
            )
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        if engine.dialect.name == "postgresql":
            # Every statement here is a transaction by itself: no BEGIN and COMMIT round
            # trips around it. (SQLite's transactions cost no round trip.)
            engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.engine = engine
        self._add = _UPSERTS[engine.dialect.name, False]
        self._add_if_room = _UPSERTS[engine.dialect.name, True]
        self._clock = clock
        self._purge_interval = purge_interval
        self._next_purge = 0.0

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        """What a failing database raises (flask-limiter falls back to memory on any)."""
        return SQLAlchemyError

    def _maybe_purge(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + self._purge_interval
        try:
            purge_expired(self.engine, _at(now))
        except SQLAlchemyError:
            # Only tidying: expired counts already count as nothing.
            log.warning("rate limits: expired counts not deleted; retried later", exc_info=True)

    # --- limits.storage.Storage ---------------------------------------------------------------

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Add `amount` to the count of `key` (which expires `expiry` seconds after it
        started) and return the new count."""
        now = self._clock()
        at = _at(now)
        values = {
            "key": key,
            "amount": amount,
            "now": at,
            "expires_at": at + dt.timedelta(seconds=expiry),
        }
        with self.engine.begin() as conn:
            count = conn.execute(self._add, values).scalar_one()
        self._maybe_purge(now)
        return int(count)

    def get(self, key: str) -> int:
        """The count of `key`; 0 when it has none or it has expired."""
        with self.engine.begin() as conn:
            count = conn.execute(_COUNT, {"key": key, "now": _at(self._clock())}).scalar()
        return int(count or 0)

    def get_expiry(self, key: str) -> float:
        """When the count of `key` expires (seconds since the epoch); now when it has none."""
        now = self._clock()
        with self.engine.begin() as conn:
            expires_at = conn.execute(_EXPIRY, {"key": key, "now": _at(now)}).scalar()
        return expires_at.timestamp() if expires_at is not None else now

    def check(self) -> bool:
        """Whether the table answers (flask-limiter asks while it counts in memory)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(_CHECK)
        except SQLAlchemyError:
            return False
        return True

    def reset(self) -> int | None:
        """Delete every count (every key, every process's); returns how many went."""
        with self.engine.begin() as conn:
            return conn.execute(delete(_TABLE)).rowcount

    def clear(self, key: str) -> None:
        """Forget the count of `key`."""
        with self.engine.begin() as conn:
            conn.execute(_CLEAR, {"keys": [key]})

    # --- limits.storage.SlidingWindowCounterSupport ---------------------------------------

    def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        """Count `amount` hits in the current window of `key` if the weighted count of the
        previous and current windows leaves room for them under `limit`; else count nothing.
        """
        if amount > limit:
            return False
        now = self._clock()
        at = _at(now)
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        with self.engine.connect() as conn:
            # Two transactions on one connection: on SQLite a read followed by a write in
            # one transaction fails at once (no waiting) if another process wrote between.
            with conn.begin():
                previous = conn.execute(_COUNT, {"key": previous_key, "now": at}).scalar()
            previous_weight = self._previous_weight(int(previous or 0), expiry, now)
            # floor(previous_weight + current) + amount <= limit, for a whole `current`:
            room = limit - amount - math.floor(previous_weight)
            if room < 0:
                return False
            values = {
                "key": current_key,
                "amount": amount,
                "now": at,
                # A window's count lives for two windows: it is the previous one next.
                "expires_at": at + dt.timedelta(seconds=2 * expiry),
                "room": room,
            }
            with conn.begin():
                counted = conn.execute(self._add_if_room, values).scalar()
        self._maybe_purge(now)
        return counted is not None

    def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        """(previous window's count, its time left, current window's count, its time left),
        as `limits.storage.MemoryStorage` computes them."""
        now = self._clock()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        with self.engine.begin() as conn:
            rows = conn.execute(_WINDOWS, {"keys": [previous_key, current_key], "now": _at(now)})
            counts: dict[str, int] = {name: count for name, count in rows}
        previous = int(counts.get(previous_key, 0))
        current = int(counts.get(current_key, 0))
        previous_ttl = self._previous_ttl(previous, expiry, now)
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        return previous, previous_ttl, current, current_ttl

    def clear_sliding_window(self, key: str, expiry: int) -> None:
        """Forget both windows of `key`."""
        keys = list(self.sliding_window_keys(key, expiry, self._clock()))
        with self.engine.begin() as conn:
            conn.execute(_CLEAR, {"keys": keys})

    @staticmethod
    def _previous_ttl(previous: int, expiry: int, now: float) -> float:
        # What is left of the previous window, sliding out (limits' own arithmetic).
        if previous == 0:
            return 0.0
        return (1 - (((now - expiry) / expiry) % 1)) * expiry

    @classmethod
    def _previous_weight(cls, previous: int, expiry: int, now: float) -> float:
        return previous * cls._previous_ttl(previous, expiry, now) / expiry
