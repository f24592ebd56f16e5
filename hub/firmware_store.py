"""Roll-outs and per-node firmware state: ``firmware.db`` in the hub's data dir.

Its own SQLite file (WAL), written by ``tctl firmware push`` (a new roll-out)
and by the running hub (progress, results), read by ``tctl firmware status``.
Bundles being rolled out are copied to ``firmware/bundles/<sha256>.bundle`` and
the signing keys the hub trusts live in ``firmware/trusted.pub``.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

__all__ = ["FINAL", "FirmwareStore", "NodeState", "Rollout", "firmware_dir"]

#: Node states after which a roll-out does nothing more with the node.
FINAL = frozenset({"installed", "failed", "rolled-back"})
#: Node states that stop a roll-out when a canary reaches them.
CANARY_FAILURES = frozenset({"failed", "rolled-back"})
#: Seconds a canary may stay offline before another node replaces it (--canary-timeout).
CANARY_TIMEOUT = 600.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    bundle TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    selector TEXT NOT NULL,
    canary_percent REAL,
    max_parallel INTEGER NOT NULL,
    rate REAL,
    force INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    finished REAL,
    canary_timeout REAL NOT NULL DEFAULT 600
);
CREATE TABLE IF NOT EXISTS rollout_nodes (
    rollout TEXT NOT NULL REFERENCES rollouts(id),
    node_id TEXT NOT NULL,
    node_name TEXT NOT NULL,
    canary INTEGER NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    progress INTEGER NOT NULL DEFAULT 0,
    resumed_from INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    PRIMARY KEY (rollout, node_id)
);
"""


def firmware_dir(data_dir: Path) -> Path:
    path = data_dir / "firmware"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def new_rollout_id() -> str:
    return "fw-" + secrets.token_hex(4)


@dataclass(frozen=True)
class Rollout:
    id: str
    created: float
    name: str
    version: str
    bundle: str
    """Path of the hub's copy of the bundle."""
    sha256: str
    """Of the whole bundle file."""
    size: int
    selector: dict[str, str]
    canary_percent: float | None
    max_parallel: int
    rate: float | None
    """Bytes per second per transfer, or None: no cap."""
    force: bool
    state: str
    """``running``, ``stopped`` (a canary failed) or ``done``."""
    reason: str = ""
    finished: float | None = None
    canary_timeout: float = CANARY_TIMEOUT
    """Seconds an offline canary is waited for before another node replaces it."""


@dataclass(frozen=True)
class NodeState:
    rollout: str
    node_id: str
    node_name: str
    canary: bool
    state: str
    """``pending``, then the agent's states (remoteler.firmware_xfer.STATES)."""
    detail: str
    progress: int
    resumed_from: int
    """Largest offset > 0 a transfer to this node continued from (0: never resumed)."""
    attempts: int
    updated: float

    @property
    def final(self) -> bool:
        return self.state in FINAL


class FirmwareStore:
    """Open with :meth:`open`; every write commits before it returns."""

    def __init__(self, db: aiosqlite.Connection, root: Path) -> None:
        self._db = db
        self.root = root

    @classmethod
    async def open(cls, data_dir: Path) -> FirmwareStore:
        root = firmware_dir(data_dir)
        path = root / "firmware.db"
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        db = await aiosqlite.connect(path, timeout=30)
        try:  # a damaged file: close, or its thread keeps the process from exiting
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA busy_timeout=30000")
            await db.executescript(SCHEMA)
            async with db.execute("PRAGMA table_info(rollouts)") as cur:
                columns = {row["name"] for row in await cur.fetchall()}
            if "canary_timeout" not in columns:  # a firmware.db from before --canary-timeout
                await db.execute(
                    "ALTER TABLE rollouts ADD COLUMN canary_timeout REAL NOT NULL DEFAULT 600"
                )
            await db.commit()
        except BaseException:
            await db.close()
            raise
        return cls(db, root)

    async def close(self) -> None:
        await self._db.close()

    async def create(self, rollout: Rollout, nodes: list[tuple[str, str, bool]]) -> None:
        """Store a roll-out and its nodes (id, name, canary), all ``pending``."""
        now = time.time()
        await self._db.execute(
            "INSERT INTO rollouts (id, created, name, version, bundle, sha256, size, selector,"
            " canary_percent, max_parallel, rate, force, state, reason, finished, canary_timeout)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                rollout.id,
                rollout.created,
                rollout.name,
                rollout.version,
                rollout.bundle,
                rollout.sha256,
                rollout.size,
                json.dumps(rollout.selector, sort_keys=True),
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
        await self._db.executemany(
            "INSERT INTO rollout_nodes (rollout, node_id, node_name, canary, state, updated)"
            " VALUES (?,?,?,?,'pending',?)",
            [(rollout.id, nid, name, int(canary), now) for nid, name, canary in nodes],
        )
        await self._db.commit()

    async def rollouts(self, state: str | None = None) -> list[Rollout]:
        sql = "SELECT * FROM rollouts"
        args: tuple[Any, ...] = ()
        if state is not None:
            sql, args = sql + " WHERE state = ?", (state,)
        async with self._db.execute(sql + " ORDER BY created", args) as cur:
            return [_rollout(row) for row in await cur.fetchall()]

    async def rollout(self, rollout_id: str) -> Rollout | None:
        async with self._db.execute("SELECT * FROM rollouts WHERE id = ?", (rollout_id,)) as cur:
            row = await cur.fetchone()
        return _rollout(row) if row is not None else None

    async def nodes(self, rollout_id: str) -> list[NodeState]:
        async with self._db.execute(
            "SELECT * FROM rollout_nodes WHERE rollout = ? ORDER BY canary DESC, node_name",
            (rollout_id,),
        ) as cur:
            return [_node(row) for row in await cur.fetchall()]

    async def update_node(
        self,
        rollout_id: str,
        node_id: str,
        state: str,
        detail: str,
        progress: int | None = None,
        resumed_from: int | None = None,
        attempt: bool = False,
        expect: str | None = None,
    ) -> bool:
        """Set a node's state; ``resumed_from`` keeps the largest value seen.

        With ``expect``, only if the node is still in that state (compare-and-set:
        a state read earlier must not overwrite one reported since). True if set.
        """
        cur = await self._db.execute(
            "UPDATE rollout_nodes SET state = ?, detail = ?, updated = ?,"
            " progress = COALESCE(?, progress),"
            " resumed_from = MAX(resumed_from, COALESCE(?, 0)),"
            " attempts = attempts + ?"
            " WHERE rollout = ? AND node_id = ? AND (? IS NULL OR state = ?)",
            (
                state,
                detail[:400],
                time.time(),
                progress,
                resumed_from,
                int(attempt),
                rollout_id,
                node_id,
                expect,
                expect,
            ),
        )
        await self._db.commit()
        return cur.rowcount > 0

    async def replace_canary(self, rollout_id: str, old_id: str, new_id: str, detail: str) -> bool:
        """Make ``new_id`` a canary in place of ``old_id`` (one transaction).

        False (nothing changed) if the roll-out is not running or ``new_id`` is
        no longer a pending non-canary.
        """
        try:
            cur = await self._db.execute(
                "UPDATE rollout_nodes SET canary = 1, updated = ?"
                " WHERE rollout = ? AND node_id = ? AND canary = 0 AND state = 'pending'"
                " AND EXISTS (SELECT 1 FROM rollouts WHERE id = ? AND state = 'running')",
                (time.time(), rollout_id, new_id, rollout_id),
            )
            if cur.rowcount == 0:
                await self._db.rollback()
                return False
            await self._db.execute(
                "UPDATE rollout_nodes SET canary = 0, detail = ?, updated = ?"
                " WHERE rollout = ? AND node_id = ?",
                (detail[:400], time.time(), rollout_id, old_id),
            )
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise
        return True

    async def finish(self, rollout_id: str, state: str, reason: str = "") -> bool:
        """End a running roll-out; False (nothing changed) if it was not running."""
        cur = await self._db.execute(
            "UPDATE rollouts SET state = ?, reason = ?, finished = ?"
            " WHERE id = ? AND state = 'running'",
            (state, reason[:400], time.time(), rollout_id),
        )
        await self._db.commit()
        return cur.rowcount > 0


def _rollout(row: Any) -> Rollout:
    return Rollout(
        id=row["id"],
        created=row["created"],
        name=row["name"],
        version=row["version"],
        bundle=row["bundle"],
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


def _node(row: Any) -> NodeState:
    return NodeState(
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
    )
