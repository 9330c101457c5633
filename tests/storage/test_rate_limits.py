"""Rate-limit counts in the database: one count for every process, exact under concurrent
increments, windows that expire by the clock, expired counts deleted, and transactions of
their own."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable

import pytest
from limits import parse
from limits.errors import ConfigurationError
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter
from sqlalchemy import inspect, select

from storage import db as storage_db
from storage.models import CareHome, RateLimitCounter
from storage.rate_limits import DATABASE_STORAGE_URI, DatabaseStorage, purge_expired

START = dt.datetime(2027, 3, 1, 9, 0, 30, tzinfo=dt.UTC).timestamp()


class Clock:
    """A clock the test moves by hand (seconds since the epoch)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def storage(engine, clock) -> DatabaseStorage:
    return DatabaseStorage(DATABASE_STORAGE_URI, engine=engine, clock=clock)


def _rows(engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(select(RateLimitCounter.key, RateLimitCounter.count)).all())


def _all_at_once(workers: int, work: Callable[[], object]) -> list[object]:
    """Run `work` in `workers` threads released together; their results."""
    start = threading.Barrier(workers)
    results: list[object] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            start.wait()
            result = work()
        except BaseException as exc:  # reported below, in the test's thread
            with lock:
                errors.append(exc)
            return
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return results


def test_the_scheme_is_registered_and_needs_the_apps_engine(engine):
    storage = storage_from_string(DATABASE_STORAGE_URI, engine=engine)
    assert isinstance(storage, DatabaseStorage)
    assert storage.check()
    with pytest.raises(ConfigurationError, match="engine"):
        storage_from_string(DATABASE_STORAGE_URI)


def test_two_storages_on_one_database_share_every_count(engine, clock):
    # Two web workers: each builds its own storage on its own engine.
    other_engine = storage_db.make_engine(engine.url.render_as_string(hide_password=False))
    first = DatabaseStorage(engine=engine, clock=clock)
    second = DatabaseStorage(engine=other_engine, clock=clock)
    try:
        assert first.incr("k", 60) == 1
        assert second.incr("k", 60) == 2
        assert first.incr("k", 60, amount=3) == 5
        assert (first.get("k"), second.get("k")) == (5, 5)
        second.clear("k")
        assert first.get("k") == 0
    finally:
        other_engine.dispose()


def test_a_count_expires_with_its_window_and_then_starts_again(storage, clock):
    assert [storage.incr("k", 10) for _ in range(3)] == [1, 2, 3]
    assert storage.get_expiry("k") == pytest.approx(START + 10)
    clock.advance(5)
    # A live count keeps the expiry it started with.
    assert storage.incr("k", 10) == 4
    assert storage.get_expiry("k") == pytest.approx(START + 10)
    clock.advance(5)
    assert storage.get("k") == 0
    assert storage.get_expiry("k") == pytest.approx(clock.now)  # none: "now", as limits says
    assert storage.incr("k", 10) == 1
    assert storage.get_expiry("k") == pytest.approx(START + 20)


def test_the_fixed_window_strategy_counts_in_the_database(storage, clock):
    limiter = FixedWindowRateLimiter(storage)
    item = parse("2/second")
    assert [limiter.hit(item, "a") for _ in range(3)] == [True, True, False]
    clock.advance(1)
    assert limiter.hit(item, "a")


def test_the_sliding_window_refuses_at_the_limit_and_lets_the_old_window_slide_out(storage, clock):
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = parse("4/minute")
    assert [limiter.hit(item, "address", "1.2.3.4") for _ in range(5)] == [True] * 4 + [False]
    assert not limiter.test(item, "address", "1.2.3.4")
    assert limiter.hit(item, "address", "5.6.7.8")  # another key, its own budget
    # Window boundaries fall on whole minutes; START is 30 s into one.
    clock.advance(30)
    # A new window, but the previous one (4 hits) still weighs 4 * 60/60: full.
    assert not limiter.hit(item, "address", "1.2.3.4")
    clock.advance(15)
    # 15 s into the window: 45 s of the previous one are still inside the sliding minute,
    # so it weighs 4 * 45/60 = 3, and one more fits.
    assert [limiter.hit(item, "address", "1.2.3.4") for _ in range(2)] == [True, False]
    assert limiter.get_window_stats(item, "address", "1.2.3.4").remaining == 0
    clock.advance(30)
    # 45 s in: the previous window weighs 4 * 15/60 = 1, with 1 in this one: two more fit.
    assert [limiter.hit(item, "address", "1.2.3.4") for _ in range(3)] == [True, True, False]
    clock.advance(120)
    # Both windows have gone by: the full budget again.
    assert [limiter.hit(item, "address", "1.2.3.4") for _ in range(5)] == [True] * 4 + [False]
    limiter.clear(item, "address", "1.2.3.4")
    assert limiter.test(item, "address", "1.2.3.4")


def test_a_hit_costing_more_than_the_room_left_is_refused_and_not_counted(storage):
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = parse("5/minute")
    assert limiter.hit(item, "k", cost=3)
    assert not limiter.hit(item, "k", cost=3)
    assert not limiter.hit(item, "k", cost=6)
    assert limiter.get_window_stats(item, "k").remaining == 2
    assert limiter.hit(item, "k", cost=2)


def test_concurrent_increments_give_the_exact_total(engine, clock):
    storage = DatabaseStorage(engine=engine, clock=clock)
    threads, each = 8, 25

    def work() -> list[int]:
        return [storage.incr("shared", 3600) for _ in range(each)]

    counts = [n for result in _all_at_once(threads, work) for n in result]  # type: ignore[union-attr]
    assert storage.get("shared") == threads * each
    # Every increment saw a count of its own: none was lost or counted twice.
    assert sorted(counts) == list(range(1, threads * each + 1))


def test_concurrent_hits_take_exactly_the_limit(engine, clock):
    storage = DatabaseStorage(engine=engine, clock=clock)
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = parse("50/hour")

    def work() -> int:
        return sum(limiter.hit(item, "one address") for _ in range(15))

    taken = _all_at_once(8, work)  # 120 attempts at once for 50 places
    assert sum(taken) == 50  # type: ignore[arg-type]
    assert storage.get_sliding_window(item.key_for("one address"), item.get_expiry())[2] == 50


def test_expired_counts_are_deleted_while_the_storage_counts(engine, clock):
    storage = DatabaseStorage(engine=engine, clock=clock, purge_interval=60)
    storage.incr("short", 10)
    storage.incr("long", 3600)
    clock.advance(30)
    storage.incr("other", 10)  # within a minute of the last deletion: nothing deleted yet
    assert set(_rows(engine)) == {"short", "long", "other"}
    clock.advance(31)
    storage.incr("another", 10)
    assert set(_rows(engine)) == {"long", "another"}


def test_purge_expired_deletes_only_what_has_expired(engine, storage, clock):
    storage.incr("short", 10)
    storage.incr("long", 3600)
    at = dt.datetime.fromtimestamp(START, dt.UTC)
    assert purge_expired(engine, at + dt.timedelta(seconds=9)) == 0
    assert purge_expired(engine, at + dt.timedelta(seconds=10)) == 1
    assert _rows(engine) == {"long": 1}
    assert storage.reset() == 1
    assert _rows(engine) == {}


def test_counting_neither_commits_nor_rolls_back_a_sessions_work(engine, session, storage):
    if engine.dialect.name == "sqlite":
        pytest.skip(
            "SQLite has one writer at a time: a count would wait for the session's write lock"
        )
    session.add(CareHome(key="willow court", name="Willow Court"))
    session.flush()
    assert storage.incr("k", 60) == 1
    session.rollback()
    assert session.scalars(select(CareHome)).all() == []
    assert storage.get("k") == 1


def test_a_database_without_the_table_is_reported_unhealthy_until_migrated(tmp_path, clock):
    engine = storage_db.make_engine(f"sqlite:///{tmp_path / 'new.sqlite3'}")
    try:
        storage = DatabaseStorage(engine=engine, clock=clock)
        assert not storage.check()
        storage_db.upgrade(engine)
        assert "rate_limit_counters" in inspect(engine).get_table_names()
        assert storage.check()
        assert storage.incr("k", 60) == 1
        storage_db.downgrade(engine, "0006")
        assert "rate_limit_counters" not in inspect(engine).get_table_names()
    finally:
        engine.dispose()
