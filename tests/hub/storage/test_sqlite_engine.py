"""The SQLite engine's own promises: the file (WAL, 0600), migrations of a data dir
from before hub/storage, two hubs on one file (presence, the change feed), check()."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from hub.storage.api import Change, Node, Presence, StorageError, TooNew, User
from hub.storage.sqlite import SQLiteStorage, open_sqlite
from hub.storage.sqlite.migrate import migrations
from remoteler.access import PRESET_ROLES
from remoteler.locks import Lock

#: hub.db as the oldest hub wrote it: nodes without recording and clock_skew
OLD_SCHEMA = """
CREATE TABLE users (name TEXT PRIMARY KEY, roles TEXT NOT NULL, logins TEXT NOT NULL,
    password_hash TEXT, totp_secret TEXT, totp_last_step INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL);
CREATE TABLE roles (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE nodes (id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, labels TEXT NOT NULL,
    version TEXT NOT NULL DEFAULT '', online INTEGER NOT NULL DEFAULT 0, last_seen REAL,
    joined REAL NOT NULL, token_labels TEXT NOT NULL DEFAULT '{}',
    audit_pending INTEGER NOT NULL DEFAULT 0, audit_oldest REAL);
INSERT INTO users VALUES ('alice', '["access"]', '["pi"]', 'h', NULL, 3, 10.0);
INSERT INTO nodes (id, name, labels, online, joined)
    VALUES ('id-1', 'truck-1', '{"a": "b"}', 1, 5.0);
"""


async def test_file_is_wal_and_0600(tmp_path: Path) -> None:
    storage = await open_sqlite(tmp_path)
    try:
        await storage.users.put(User("alice", (), (), None, "SEED", 0, 1.0))
        for p in [tmp_path / "hub.db", *tmp_path.glob("hub.db-*")]:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        await storage.close()
    with sqlite3.connect(tmp_path / "hub.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        newest = migrations("hub")[-1].version  # part A's 0001-0002, part B's 0003
        assert raw.execute("PRAGMA user_version").fetchone()[0] == newest


async def test_version_0_file_is_migrated_in_place(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "hub.db") as raw:
        raw.executescript(OLD_SCHEMA)
    # a node and no audit.db: only a trail begun on purpose (test_sqlite_checks.py)
    storage = await open_sqlite(tmp_path, accept_empty_audit=True)
    try:
        alice = await storage.users.get("alice")
        assert alice is not None and alice.totp_last_step == 3
        node = await storage.nodes.get("truck-1")
        assert node is not None and dict(node.labels) == {"a": "b"}
        assert (node.recording, node.clock_skew) == ("off", None)
        assert not node.online, "the old online flag is not read: no hub holds it"
        assert [r.name for r in await storage.roles.all()] == sorted(r.name for r in PRESET_ROLES)
    finally:
        await storage.close()
    again = await open_sqlite(tmp_path)  # reopening applies nothing twice
    await again.close()


async def test_newer_file_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "hub.db") as raw:
        raw.execute("PRAGMA user_version = 999")
    with pytest.raises(TooNew, match="newer than this hub"):
        await open_sqlite(tmp_path)


async def test_check_names_a_damaged_file(tmp_path: Path) -> None:
    storage = await open_sqlite(tmp_path)
    try:
        await storage.check()
    finally:
        await storage.close()
    (tmp_path / "hub.db").write_bytes(b"not a database at all" * 300)
    with pytest.raises(StorageError, match=r"hub\.db") as err:
        storage = await open_sqlite(tmp_path)
        await storage.close()
    assert "\n" not in str(err.value)


async def test_restart_of_one_hub_leaves_the_other_hubs_nodes_online(tmp_path: Path) -> None:
    """Two hubs on one file: hub B's restart (drop_hub) does not touch hub A's leases."""
    a, b = await open_sqlite(tmp_path), await open_sqlite(tmp_path)
    try:
        now = time.time()
        for i in range(4):
            await a.nodes.add(Node(id=f"id-{i}", name=f"n{i}"))
        await a.presence.beat_many([Presence(f"id-{i}", "hub-a", now + 15) for i in (0, 1)])
        await b.presence.beat_many([Presence(f"id-{i}", "hub-b", now + 15) for i in (2, 3)])
        assert sum(n.online for n in await a.nodes.all()) == 4
        await b.presence.drop_hub("hub-b")  # hub B stops, starts again
        online = {n.name for n in await b.nodes.all() if n.online}
        assert online == {"n0", "n1"}
    finally:
        await a.close()
        await b.close()


async def test_write_by_another_process_is_a_gap_on_the_feed(tmp_path: Path) -> None:
    a = await SQLiteStorage.open(tmp_path, poll=0.05)
    b = await open_sqlite(tmp_path)
    changes = a.changes()
    try:
        waiting = asyncio.ensure_future(asyncio.wait_for(anext(changes), 2.0))
        await asyncio.sleep(0.1)
        await b.locks.add(Lock("0123456789ab", "user", "alice", "", time.time()))
        assert await waiting == Change("users", "*")  # every topic, in TOPICS order
        seen = [await asyncio.wait_for(anext(changes), 1.0) for _ in range(7)]
        assert Change("locks", "*") in seen
    finally:
        await changes.aclose()  # type: ignore[attr-defined]
        await a.close()
        await b.close()


async def test_a_write_cancelled_at_any_point_leaves_no_transaction_open(tmp_path: Path) -> None:
    # A caller cancelled while BEGIN IMMEDIATE runs in aiosqlite's thread (a timeout, a
    # stopping task): the transaction must not stay open under the next caller's write.
    storage = await open_sqlite(tmp_path / "data")
    try:
        for spins in range(30):
            task = asyncio.ensure_future(storage.leases.acquire("job", "hub-a", 10.0, 1.0))
            for _ in range(spins):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert await storage.leases.acquire("other", "hub-a", 10.0 + spins, 1.0 + spins)
    finally:
        await storage.close()
