"""Nodes and their presence (which hubs hold their tunnels) in ``hub.db``.

A node is online while some hub holds a lease on it in ``presence`` that has
not expired: :class:`SQLiteNodes` derives ``online`` and ``held_by`` at read
time from the wall clock (the one place this engine reads it). The ``online``
column of older databases stays in the table and is no longer written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite

from hub.storage.api import RECORDING_MODES, Beat, Node, Presence
from hub.storage.sqlite.conn import Conn

#: A node with the hubs that hold a live lease on it (comma separated), at time ``?``:
#: a lookup in presence's primary key per node, so one node costs one probe.
_SELECT = (
    "SELECT n.*, (SELECT group_concat(p.hub_id, ',') FROM presence p "
    "WHERE p.node_id = n.id AND p.expires > ?) AS held FROM nodes n"
)


def _node(row: aiosqlite.Row, loads: Callable[[str], Any] = json.loads) -> Node:
    held = tuple(sorted(row["held"].split(","))) if row["held"] else ()
    return Node(
        id=row["id"],
        name=row["name"],
        labels=loads(row["labels"]),
        version=row["version"],
        online=bool(held),
        last_seen=row["last_seen"],
        joined=row["joined"],
        token_labels=loads(row["token_labels"]),
        audit_pending=row["audit_pending"],
        audit_oldest=row["audit_oldest"],
        recording=row["recording"],
        clock_skew=row["clock_skew"],
        caps=tuple(json.loads(row["caps"])),
        held_by=held,
    )


def _labels_loader() -> Callable[[str], dict[str, str]]:
    """``json.loads`` for the label maps of many rows: a fleet has few distinct label
    sets, so each distinct text is parsed once and every row gets its own copy."""
    parsed: dict[str, dict[str, str]] = {}

    def loads(text: str) -> dict[str, str]:
        labels = parsed.get(text)
        if labels is None:
            labels = parsed[text] = json.loads(text)
        return dict(labels)  # label maps are flat: a shallow copy is a whole copy

    return loads


class SQLiteNodes:
    def __init__(self, conn: Conn, clock: Callable[[], float] = time.time) -> None:
        self._c = conn
        self._clock = clock

    async def add(self, node: Node) -> None:
        await self._c.write(
            "INSERT INTO nodes (id, name, labels, version, last_seen, joined,"
            " token_labels, audit_pending, audit_oldest, recording, caps)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                node.id,
                node.name,
                json.dumps(dict(node.labels)),
                node.version,
                node.last_seen,
                node.joined,
                json.dumps(dict(node.token_labels)),
                node.audit_pending,
                node.audit_oldest,
                node.recording,
                json.dumps(list(node.caps)),
            ),
        )
        self._c.publish("nodes", node.id)

    async def get(self, key: str) -> Node | None:
        row = await self._c.one(
            f"{_SELECT} WHERE n.id = ? OR n.name = ?", (self._clock(), key, key)
        )
        return _node(row) if row else None

    async def all(self) -> list[Node]:
        loads = _labels_loader()
        rows = await self._c.all(f"{_SELECT} ORDER BY n.name", (self._clock(),))
        return [_node(r, loads) for r in rows]

    async def delete(self, key: str) -> bool:
        async with self._c.transaction() as db:
            async with db.execute(
                "DELETE FROM nodes WHERE id = ? OR name = ? RETURNING id", (key, key)
            ) as cur:
                ids = [row[0] for row in await cur.fetchall()]
            await db.executemany("DELETE FROM presence WHERE node_id = ?", [(i,) for i in ids])
        for node_id in ids:
            self._c.publish("nodes", node_id)
        return bool(ids)

    async def set_recording(self, key: str, mode: str) -> Node | None:
        if mode not in RECORDING_MODES:
            raise ValueError(f"recording mode must be one of {RECORDING_MODES}")
        rows = await self._c.returning(
            "UPDATE nodes SET recording = ? WHERE id = ? OR name = ? RETURNING id",
            (mode, key, key),
        )
        for row in rows:
            self._c.publish("nodes", row[0])
        return await self.get(key)

    async def recordings(self, ids: Sequence[str]) -> dict[str, str]:
        unique = set(ids)
        if len(unique) > 32:  # one pass over the table beats many lookups
            rows = await self._c.all("SELECT id, recording FROM nodes")
        else:
            rows = []
            for node_id in unique:
                row = await self._c.one("SELECT id, recording FROM nodes WHERE id = ?", (node_id,))
                rows += [row] if row else []
        return {row["id"]: row["recording"] for row in rows if row["id"] in unique}

    async def heartbeats(self, beats: Sequence[Beat]) -> list[str]:
        missing = []
        async with self._c.transaction() as db:
            for b in beats:
                cur = await db.execute(
                    "UPDATE nodes SET last_seen = ?, labels = ?, version = ?, audit_pending = ?,"
                    " audit_oldest = ?, clock_skew = ?, caps = ? WHERE id = ?",
                    (
                        b.last_seen,
                        json.dumps(dict(b.labels)),
                        b.version,
                        b.audit_pending,
                        b.audit_oldest,
                        b.clock_skew,
                        json.dumps(list(b.caps)),
                        b.node_id,
                    ),
                )
                if cur.rowcount == 0:
                    missing.append(b.node_id)
                await cur.close()
        return missing


_UPSERT = (
    "INSERT INTO presence (node_id, hub_id, expires) VALUES (?, ?, ?) "
    "ON CONFLICT (node_id, hub_id) DO UPDATE SET expires = excluded.expires"
)


class SQLitePresence:
    """Leases are not published on the change feed: they change with every flush."""

    def __init__(self, conn: Conn) -> None:
        self._c = conn

    async def beat(self, node_id: str, hub_id: str, expires: float) -> None:
        await self._c.write(_UPSERT, (node_id, hub_id, expires))

    async def beat_many(self, leases: Sequence[Presence]) -> None:
        if not leases:
            return
        async with self._c.transaction() as db:
            await db.executemany(_UPSERT, [(p.node_id, p.hub_id, p.expires) for p in leases])

    async def drop(self, node_id: str, hub_id: str) -> None:
        await self._c.write(
            "DELETE FROM presence WHERE node_id = ? AND hub_id = ?", (node_id, hub_id)
        )

    async def drop_hub(self, hub_id: str) -> int:
        return await self._c.write("DELETE FROM presence WHERE hub_id = ?", (hub_id,))

    async def holders(self, node_id: str, now: float) -> list[Presence]:
        rows = await self._c.all(
            "SELECT * FROM presence WHERE node_id = ? AND expires > ? ORDER BY hub_id",
            (node_id, now),
        )
        return [Presence(r["node_id"], r["hub_id"], r["expires"]) for r in rows]

    async def all(self, now: float) -> list[Presence]:
        rows = await self._c.all(
            "SELECT * FROM presence WHERE expires > ? ORDER BY node_id, hub_id", (now,)
        )
        return [Presence(r["node_id"], r["hub_id"], r["expires"]) for r in rows]

    async def expire(self, now: float, limit: int) -> int:
        return await self._c.write(
            "DELETE FROM presence WHERE rowid IN "
            "(SELECT rowid FROM presence WHERE expires <= ? LIMIT ?)",
            (now, limit),
        )
