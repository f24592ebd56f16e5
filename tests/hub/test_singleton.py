"""hub/singleton.py: the lease core without I/O, then Singletons on a real storage (two
holder ids, one lease; SQLite, and PostgreSQL for a dead holder): one runs the job; a
stopped or dead holder's job moves to the other within one lease period, and the two
never run it at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from hub.singleton import MARGIN, LeaseKeeper, Singleton
from hub.storage.api import Storage
from hub.storage.sqlite import open_sqlite

TTL = 0.3

# -- the core --------------------------------------------------------------------------


def test_taken_then_renewed_every_third_of_the_ttl() -> None:
    core = LeaseKeeper(15.0)
    assert not core.held(100.0)
    assert core.request(100.0) == (115.0, 100.0)
    assert core.taken(100.0) is False
    assert core.held(100.0) and core.wait(100.0) == 5.0
    core.taken(105.0)  # a renewal
    assert core.held(117.0)
    assert not core.held(120.0 - 15.0 * MARGIN), "stops before its lease's end"


def test_failed_renewals_keep_it_until_the_stopping_point_then_lose_it() -> None:
    core = LeaseKeeper(15.0)
    core.taken(100.0)  # ends at 115; stops at 112.5
    assert core.failed(105.0) is False and core.held(105.0)
    assert core.wait(110.0) == pytest.approx(2.5), "wakes at the stopping point"
    assert core.timeout(111.0) == pytest.approx(1.5), "a call never outlasts it"
    assert core.failed(112.5) is True
    assert not core.held(112.5) and core.wait(112.5) == 5.0
    assert core.failed(113.0) is False, "lost once"


def test_refused_loses_it_and_aims_at_the_other_holders_end() -> None:
    core = LeaseKeeper(15.0)
    core.taken(100.0)
    assert core.refused(130.0) is True  # another hub took it over
    assert not core.held(101.0)
    assert core.wait(101.0) == 5.0
    assert core.wait(128.0) == pytest.approx(2.001), "right at the other's end"
    assert core.refused(None) is False and core.wait(128.0) == 5.0
    with pytest.raises(ValueError):
        LeaseKeeper(0)


# -- the runner on a real storage ----------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: Any, tmp_path: Path) -> Callable[[], Awaitable[Storage]]:
    """Opens one more Storage on one database (what another hub holds)."""
    if request.param == "sqlite":
        return lambda: open_sqlite(tmp_path / "data")
    from hub.storage.postgres import open_postgres

    url = request.getfixturevalue("pg_server").new_database()
    return lambda: open_postgres(url)


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    opened = await open_sqlite(tmp_path / "data")
    try:
        yield opened
    finally:
        await opened.close()


class Work:
    """A job that notes who runs it, and when, and checks that nobody else does."""

    def __init__(self) -> None:
        self.running: set[str] = set()
        self.overlaps = 0
        #: (who, "start" | "stop", monotonic time)
        self.log: list[tuple[str, str, float]] = []

    def job(self, who: str) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            if self.running:
                self.overlaps += 1
            self.running.add(who)
            self.log.append((who, "start", time.monotonic()))
            try:
                await asyncio.Event().wait()
            finally:
                self.running.discard(who)
                self.log.append((who, "stop", time.monotonic()))

        return run

    def started(self, who: str) -> list[float]:
        return [t for w, what, t in self.log if w == who and what == "start"]

    def stopped(self, who: str) -> list[float]:
        return [t for w, what, t in self.log if w == who and what == "stop"]


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_one_of_two_runs_the_job_and_a_stopped_holder_hands_over(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "remoteler.hub.singleton")
    work = Work()
    a = Singleton(storage.leases, "job", "hub-a", ttl=TTL)
    b = Singleton(storage.leases, "job", "hub-b", ttl=TTL)
    run_a = asyncio.ensure_future(a.run(work.job("hub-a")))
    await _until(lambda: work.running == {"hub-a"})
    run_b = asyncio.ensure_future(b.run(work.job("hub-b")))
    try:
        await asyncio.sleep(4 * TTL)  # a dozen renewals and refusals
        assert work.running == {"hub-a"} and a.held and not b.held
        lease = await storage.leases.get("job")
        assert lease is not None and lease.holder == "hub-a"
        stopped = time.monotonic()
        await _cancel(run_a)  # a clean stop: cancels its job, releases the lease
        assert work.running == set() and not a.held
        await _until(lambda: work.running == {"hub-b"}, timeout=TTL + 1.0)
        assert work.started("hub-b")[0] - stopped < TTL, "at hub B's next try"
        assert b.held and work.overlaps == 0
    finally:
        await _cancel(run_a)
        await _cancel(run_b)
    assert work.running == set()
    assert await storage.leases.get("job") is None, "released at the stop"
    lines = [(r.getMessage(), getattr(r, "hub_id", None)) for r in caplog.records]
    assert ("lease acquired", "hub-a") in lines and ("lease acquired", "hub-b") in lines
    assert all(getattr(r, "lease", None) == "job" for r in caplog.records)


async def test_a_dead_holders_job_moves_within_one_lease_period(
    opener: Callable[[], Awaitable[Storage]],
) -> None:
    # Two hubs, each its own Storage on one database; hub A's storage goes away (its
    # renewals fail from then on): it stops its job before its lease ends, and hub B
    # takes the lease when it lapses, within TTL of hub A's last renewal.
    first = await opener()
    second = await opener()
    work = Work()
    a = Singleton(first.leases, "job", "hub-a", ttl=TTL)
    b = Singleton(second.leases, "job", "hub-b", ttl=TTL)
    run_a = asyncio.ensure_future(a.run(work.job("hub-a")))
    await _until(lambda: work.running == {"hub-a"})
    run_b = asyncio.ensure_future(b.run(work.job("hub-b")))
    try:
        await asyncio.sleep(2 * TTL)
        lease = await second.leases.get("job")
        assert lease is not None and lease.holder == "hub-a"
        await first.close()  # hub A can no longer renew
        died = time.monotonic()
        # B's retries come a fraction of TTL apart, so it takes over about TTL after
        # A's last renewal; the deadline is loose (a loaded CI machine stalls loops for
        # seconds): the order below is what must hold.
        await _until(lambda: work.running == {"hub-b"}, timeout=TTL + 10.0)
        assert work.started("hub-b")[0] >= died
        assert work.stopped("hub-a")[0] <= work.started("hub-b")[0], "never both"
        assert work.overlaps == 0 and not a.held and b.held
    finally:
        await _cancel(run_b)
        await _cancel(run_a)
        await second.close()


async def test_a_late_loop_stops_the_job_before_it_tries_again(storage: Storage) -> None:
    # The event loop stalled (or the clock stepped) past the stopping point: the job is
    # stopped before the next acquire, and runs again once that acquire holds the lease.
    now = [1000.0]
    work = Work()
    single = Singleton(storage.leases, "job", "hub-a", ttl=TTL, clock=lambda: now[0])
    task = asyncio.ensure_future(single.run(work.job("hub-a")))
    try:
        await _until(lambda: work.running == {"hub-a"})
        now[0] += TTL
        assert not single.held
        await _until(lambda: len(work.started("hub-a")) == 2)
        assert work.stopped("hub-a")[0] <= work.started("hub-a")[1] and work.overlaps == 0
    finally:
        await _cancel(task)


async def test_a_job_that_fails_is_started_again_while_held(storage: Storage) -> None:
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("boom")

    single = Singleton(storage.leases, "flaky", "hub-a", ttl=TTL)
    task = asyncio.ensure_future(single.run(flaky))
    try:
        await _until(lambda: runs >= 3, timeout=3.0)
    finally:
        await _cancel(task)


async def test_without_a_job_it_only_holds_the_lease(storage: Storage) -> None:
    single = Singleton(storage.leases, "gate", "hub-a", ttl=TTL)
    other = Singleton(storage.leases, "gate", "hub-b", ttl=TTL)
    task = asyncio.ensure_future(single.run())
    late = asyncio.ensure_future(other.run())
    try:
        await _until(lambda: single.held)
        await asyncio.sleep(TTL)
        assert single.held and not other.held
    finally:
        await _cancel(task)
        await _until(lambda: other.held, timeout=TTL + 1.0)
        await _cancel(late)


async def test_the_hub_holds_its_four_leases_and_releases_them_at_stop(tmp_path: Path) -> None:
    """hub/app.py runs a Singleton for each kind of cluster-wide work; a lone hub takes
    every lease at start and gives them up at a clean stop."""
    from hub.app import HubApp
    from hub.cli import build_parser

    data = tmp_path / "data"
    argv = ["start", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--gc-interval", "0"]
    args = build_parser().parse_args([*argv, "--hub-id", "hub-one", "--audit-retention", "30"])
    names = ["audit-retention", "firmware-orchestration", "presence-gc", "rotation-auto"]
    async with HubApp(args) as app:
        assert app.server is not None
        leases = app.server.storage.leases

        async def held() -> list[tuple[str, str]]:
            return [(x.name, x.holder) for x in await leases.all()]

        deadline = time.monotonic() + 5
        while await held() != [(name, "hub-one") for name in names]:
            assert time.monotonic() < deadline, await held()
            await asyncio.sleep(0.02)
    storage = await open_sqlite(data)
    try:
        assert await storage.leases.all() == [], "released at the stop"
    finally:
        await storage.close()


@pytest.mark.parametrize("days", ["-1", "nan"])
async def test_a_bad_audit_retention_is_refused_with_one_line(tmp_path: Path, days: str) -> None:
    from hub.app import HubApp
    from hub.cli import build_parser
    from remoteler.errors import UsageError

    args = build_parser().parse_args(
        ["start", "--data-dir", str(tmp_path / "data"), "--audit-retention", days]
    )
    with pytest.raises(UsageError, match="--audit-retention must be 0"):
        await HubApp(args).start()
