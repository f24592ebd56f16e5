"""hub/sweeps.py on a real storage: lapsed presence leases and hub records go in
batches until a batch is short; audit retention deletes what is older than DAYS
(recordings too: their chunks are events), in batches, at once and then on its beat."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub import sweeps
from hub.storage.api import AuditQuery, HubRecord, Presence, Storage
from hub.storage.sqlite import open_sqlite
from remoteler.audit.events import AuditEvent


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    opened = await open_sqlite(tmp_path / "data")
    try:
        yield opened
    finally:
        await opened.close()


def _hub(hub_id: str, expires: float) -> HubRecord:
    return HubRecord(hub_id, f"{hub_id}:3080", "", 0.0, expires)


async def test_expire_lapsed_goes_on_while_a_batch_is_full(storage: Storage) -> None:
    now = 1000.0
    await storage.presence.beat_many(
        [Presence(f"n{i}", "hub-dead", now - 1) for i in range(7)]
        + [Presence("n0", "hub-live", now + 20)]
    )
    for i in range(3):
        await storage.hubs.beat(_hub(f"hub-dead-{i}", now - 1))
    await storage.hubs.beat(_hub("hub-live", now + 20))
    assert await sweeps.expire_lapsed(storage, now, batch=2) == (7, 3)
    assert await storage.presence.all(now) == [Presence("n0", "hub-live", now + 20)]
    assert [h.id for h in await storage.hubs.live(0.0)] == ["hub-live"]
    assert await sweeps.expire_lapsed(storage, now, batch=2) == (0, 0)


async def test_presence_gc_sweeps_on_its_beat(storage: Storage) -> None:
    clock = [1000.0]
    task = asyncio.ensure_future(sweeps.presence_gc(storage, every=0.05, clock=lambda: clock[0]))
    try:
        await storage.presence.beat("n1", "hub-a", 1010.0)
        await asyncio.sleep(0.2)
        assert await storage.presence.holders("n1", 0.0) != []
        clock[0] = 1010.0  # lapsed now
        for _ in range(100):
            if not await storage.presence.holders("n1", 0.0):
                break
            await asyncio.sleep(0.02)
        assert await storage.presence.holders("n1", 0.0) == []
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _event(i: int, time: float, session: str = "") -> AuditEvent:
    kind = "session.data" if session else "user.login"
    return AuditEvent(f"ev{i:05d}", kind, time, "n1", "alice", "pi", session, i, {"n": i})


async def test_prune_audit_in_batches_until_one_is_short(storage: Storage) -> None:
    await storage.audit.insert_checked("n1", [_event(i, 100.0 + i) for i in range(1, 24)])
    assert await sweeps.prune_audit(storage.audit, 111.0, batch=5) == 10
    left = await storage.audit.search(AuditQuery(limit=None))
    assert [e.time for e in left] == [100.0 + i for i in range(11, 24)]


async def test_audit_retention_keeps_days_and_logs_the_count(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "remoteler.hub.sweeps")
    day, now = sweeps.DAY, 100 * sweeps.DAY
    old = [_event(i, now - 3 * day - i) for i in range(1, 4)]  # a recording, 3 days old
    old = [_event(i, e.time, session="s-old") for i, e in enumerate(old, start=1)]
    recent = [_event(10, now - day), _event(11, now - 60)]
    await storage.audit.insert_checked("n1", [*old, *recent])
    task = asyncio.ensure_future(
        sweeps.audit_retention(storage.audit, 2.0, every=3600, clock=lambda: now)
    )
    try:
        for _ in range(100):  # at once, not after the first hour
            if await storage.audit.count() == 2:
                break
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert [e.id for e in await storage.audit.search(AuditQuery())] == ["ev00010", "ev00011"]
    assert await storage.audit.session("s-old") == []
    assert any("audit retention: 3 events older than" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError):
        await sweeps.audit_retention(storage.audit, 0)
