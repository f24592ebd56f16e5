"""Firmware roll-outs and their nodes: ``DATA/firmware/firmware.db``, its own SQLite file.

The file and schema (``schema/firmware/0001_initial.sql``) are those of the former
``hub/firmware_store.py``. One change on read: a roll-out's ``bundle`` was the
path of the hub's copy (``.../firmware/bundles/<sha256>.bundle``); it is now the
blob's name (:class:`~hub.storage.api.Blobs`), and rows written before are read as
the name their path ends with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hub.storage.api import Change, Rollout, RolloutNode
from hub.storage.feed import ChangeFeed
from hub.storage.sqlite.txdb import TxDb

FIRMWARE_DB = Path("firmware") / "firmware.db"
#: longest ``detail`` or ``reason`` stored (an agent's error text is capped here)
MAX_DETAIL = 400


async def _add_canary_timeout(db: TxDb) -> None:
    """A firmware.db from before --canary-timeout lacks the column 0001 declares."""
    row = await db.fetchone("PRAGMA user_version")
    if row is not None and int(row[0]) > 0:
        return
    columns = {r["name"] for r in await db.fetchall("PRAGMA table_info(rollouts)")}
    if columns and "canary_timeout" not in columns:
        async with db.tx() as conn:
            await conn.execute(
                "ALTER TABLE rollouts ADD COLUMN canary_timeout REAL NOT NULL DEFAULT 600"
            )


class SQLiteFirmware:
    """:class:`hub.storage.api.Firmware` on ``firmware/firmware.db``."""

    def __init__(self, db: TxDb, feed: ChangeFeed) -> None:
        self._db = db
        self._feed = feed

    @classmethod
    async def open(cls, data_dir: Path, feed: ChangeFeed) -> SQLiteFirmware:
        db = await TxDb.open(data_dir / FIRMWARE_DB, None)
        try:
            await _add_canary_timeout(db)
            await db.migrate("firmware")
        except BaseException:
            await db.close()
            raise
        return cls(db, feed)

    @property
    def db(self) -> TxDb:
        return self._db

    async def close(self) -> None:
        await self._db.close()

    def _changed(self, rollout_id: str) -> None:
        self._feed.publish(Change("firmware", rollout_id))

    async def create(self, rollout: Rollout, nodes: Sequence[tuple[str, str, bool]]) -> None:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO rollouts (id, created, name, version, bundle, sha256, size,"
                " selector, canary_percent, max_parallel, rate, force, state, reason, finished,"
                " canary_timeout) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    rollout.id,
                    rollout.created,
                    rollout.name,
                    rollout.version,
                    rollout.bundle,
                    rollout.sha256,
                    rollout.size,
                    json.dumps(dict(rollout.selector), sort_keys=True),
                    rollout.canary_percent,
                    rollout.max_parallel,
                    rollout.rate,
                    int(rollout.force),
                    rollout.state,
                    rollout.reason,
                    rollout.finished,
                    rollout.canary_timeout,
                ),
            )
            await conn.executemany(
                "INSERT INTO rollout_nodes (rollout, node_id, node_name, canary, state, updated)"
                " VALUES (?,?,?,?,'pending',?)",
                [
                    (rollout.id, nid, name, int(canary), rollout.created)
                    for nid, name, canary in nodes
                ],
            )
        self._changed(rollout.id)

    async def rollouts(self, state: str | None = None) -> list[Rollout]:
        if state is None:
            rows = await self._db.fetchall("SELECT * FROM rollouts ORDER BY created")
        else:
            rows = await self._db.fetchall(
                "SELECT * FROM rollouts WHERE state = ? ORDER BY created", (state,)
            )
        return [_rollout(row) for row in rows]

    async def rollout(self, rollout_id: str) -> Rollout | None:
        row = await self._db.fetchone("SELECT * FROM rollouts WHERE id = ?", (rollout_id,))
        return _rollout(row) if row is not None else None

    async def nodes(self, rollout_id: str) -> list[RolloutNode]:
        rows = await self._db.fetchall(
            "SELECT * FROM rollout_nodes WHERE rollout = ? ORDER BY canary DESC, node_name",
            (rollout_id,),
        )
        return [_node(row) for row in rows]

    async def update_node(
        self,
        rollout_id: str,
        node_id: str,
        state: str,
        detail: str,
        now: float,
        progress: int | None = None,
        resumed_from: int | None = None,
        attempt: bool = False,
        expect: str | None = None,
    ) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "UPDATE rollout_nodes SET state = ?, detail = ?, updated = ?,"
                " progress = COALESCE(?, progress),"
                " resumed_from = MAX(resumed_from, COALESCE(?, 0)),"
                " attempts = attempts + ?"
                " WHERE rollout = ? AND node_id = ? AND (? IS NULL OR state = ?)",
                (
                    state,
                    detail[:MAX_DETAIL],
                    now,
                    progress,
                    resumed_from,
                    int(attempt),
                    rollout_id,
                    node_id,
                    expect,
                    expect,
                ),
            )
            done = cur.rowcount > 0
        if done:
            self._changed(rollout_id)
        return done

    async def claim(self, rollout_id: str, node_id: str, claims: int, now: float) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "UPDATE rollout_nodes SET claims = claims + 1, updated = ?"
                " WHERE rollout = ? AND node_id = ? AND claims = ?"
                " AND state NOT IN ('installed', 'failed', 'rolled-back')"
                " AND EXISTS (SELECT 1 FROM rollouts WHERE id = ? AND state = 'running')",
                (now, rollout_id, node_id, claims, rollout_id),
            )
            done = cur.rowcount > 0
        if done:
            self._changed(rollout_id)
        return done

    async def replace_canary(
        self, rollout_id: str, old_id: str, new_id: str, detail: str, now: float
    ) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "UPDATE rollout_nodes SET canary = 1, updated = ?"
                " WHERE rollout = ? AND node_id = ? AND canary = 0 AND state = 'pending'"
                " AND EXISTS (SELECT 1 FROM rollouts WHERE id = ? AND state = 'running')",
                (now, rollout_id, new_id, rollout_id),
            )
            if cur.rowcount == 0:
                return False  # nothing written: the commit is empty
            await conn.execute(
                "UPDATE rollout_nodes SET canary = 0, detail = ?, updated = ?"
                " WHERE rollout = ? AND node_id = ?",
                (detail[:MAX_DETAIL], now, rollout_id, old_id),
            )
        self._changed(rollout_id)
        return True

    async def finish(self, rollout_id: str, state: str, reason: str, now: float) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "UPDATE rollouts SET state = ?, reason = ?, finished = ?"
                " WHERE id = ? AND state = 'running'",
                (state, reason[:MAX_DETAIL], now, rollout_id),
            )
            done = cur.rowcount > 0
        if done:
            self._changed(rollout_id)
        return done


def bundle_name(stored: str) -> str:
    """The blob name of a roll-out's bundle column (a path before hub/storage)."""
    name = Path(stored).name
    return name.removesuffix(".bundle")


def _rollout(row: Any) -> Rollout:
    return Rollout(
        id=row["id"],
        created=row["created"],
        name=row["name"],
        version=row["version"],
        bundle=bundle_name(row["bundle"]),
        sha256=row["sha256"],
        size=row["size"],
        selector=json.loads(row["selector"]),
        canary_percent=row["canary_percent"],
        max_parallel=row["max_parallel"],
        rate=row["rate"],
        force=bool(row["force"]),
        state=row["state"],
        reason=row["reason"],
        finished=row["finished"],
        canary_timeout=row["canary_timeout"],
    )


def _node(row: Any) -> RolloutNode:
    return RolloutNode(
        rollout=row["rollout"],
        node_id=row["node_id"],
        node_name=row["node_name"],
        canary=bool(row["canary"]),
        state=row["state"],
        detail=row["detail"],
        progress=row["progress"],
        resumed_from=row["resumed_from"],
        attempts=row["attempts"],
        updated=row["updated"],
        claims=row["claims"],
    )
