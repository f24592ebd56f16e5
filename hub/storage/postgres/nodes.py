"""Nodes, presence (which hub holds which tunnel, as leases) and locks.

A node's ``online`` and ``held_by`` are derived on read from the presence leases
live at the time of the read (the hub's clock: the leases' expiry times come
from the hubs too).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from hub.storage.api import RECORDING_MODES, Beat, Conflict, Node, Presence
from hub.storage.postgres.db import Db, notify
from remoteler.locks import Lock

_NODE = (
    "SELECT n.*, coalesce((SELECT array_agg(p.hub_id ORDER BY p.hub_id) FROM presence p"
    " WHERE p.node_id = n.id AND p.expires > %(now)s), '{}') AS held_by FROM nodes n"
)


def _node(row: DictRow) -> Node:
    held = tuple(row["held_by"])
    return Node(
        id=row["id"],
        name=row["name"],
        labels=dict(row["labels"]),
        version=row["version"],
        online=bool(held),
        last_seen=row["last_seen"],
        joined=row["joined"],
        token_labels=dict(row["token_labels"]),
        audit_pending=row["audit_pending"],
        audit_oldest=row["audit_oldest"],
        recording=row["recording"],
        clock_skew=row["clock_skew"],
        caps=tuple(row["caps"]),
        held_by=held,
    )


def _lock(row: DictRow) -> Lock:
    return Lock(
        id=row["id"],
        kind=row["kind"],
        target=row["target"],
        message=row["message"],
        created=row["created"],
        expires=row["expires"],
        created_by=row["created_by"],
    )


class PgNodes:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def add(self, node: Node) -> None:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "INSERT INTO nodes (id, name, labels, version, last_seen, joined, token_labels,"
                " audit_pending, audit_oldest, recording, clock_skew, caps)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING RETURNING id",
                (
                    node.id,
                    node.name,
                    Jsonb(dict(node.labels)),
                    node.version,
                    node.last_seen,
                    node.joined,
                    Jsonb(dict(node.token_labels)),
                    node.audit_pending,
                    node.audit_oldest,
                    node.recording,
                    node.clock_skew,
                    Jsonb(list(node.caps)),
                ),
            )
            if await cur.fetchone() is None:
                raise Conflict(f"node {node.name!r} ({node.id}) already exists")
            await notify(conn, "nodes", node.id)

    async def get(self, key: str) -> Node | None:
        row = await self._db.one(
            _NODE + " WHERE n.id = %(key)s OR n.name = %(key)s ORDER BY n.id = %(key)s DESC"
            " LIMIT 1",
            {"key": key, "now": time.time()},
        )
        return _node(row) if row else None

    async def all(self) -> list[Node]:
        rows = await self._db.all(_NODE + " ORDER BY n.name", {"now": time.time()})
        return [_node(r) for r in rows]

    async def delete(self, key: str) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "DELETE FROM nodes WHERE id = %s OR name = %s RETURNING id", (key, key)
            )
            gone = await cur.fetchall()
            for row in gone:  # its presence leases go with it (the SQLite engine's too)
                await conn.execute("DELETE FROM presence WHERE node_id = %s", (row["id"],))
                await notify(conn, "nodes", row["id"])
            return bool(gone)

    async def set_recording(self, key: str, mode: str) -> Node | None:
        if mode not in RECORDING_MODES:
            raise ValueError(f"recording mode must be one of {RECORDING_MODES}")
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "UPDATE nodes SET recording = %s WHERE id = %s OR name = %s RETURNING id",
                (mode, key, key),
            )
            for row in await cur.fetchall():
                await notify(conn, "nodes", row["id"])
        return await self.get(key)

    async def recordings(self, ids: Sequence[str]) -> dict[str, str]:
        rows = await self._db.all(
            "SELECT id, recording FROM nodes WHERE id = ANY(%s)", (list(set(ids)),)
        )
        return {r["id"]: r["recording"] for r in rows}

    async def heartbeats(self, beats: Sequence[Beat]) -> list[str]:
        if not beats:
            return []
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "UPDATE nodes n SET last_seen = b.last_seen, labels = b.labels,"
                " version = b.version, audit_pending = b.audit_pending,"
                " audit_oldest = b.audit_oldest, clock_skew = b.clock_skew, caps = b.caps"
                " FROM (SELECT * FROM unnest(%s::text[], %s::float8[], %s::jsonb[], %s::text[],"
                " %s::bigint[], %s::float8[], %s::float8[], %s::jsonb[]) AS t(id, last_seen,"
                " labels, version, audit_pending, audit_oldest, clock_skew, caps))"
                " b WHERE n.id = b.id RETURNING n.id",
                (
                    [b.node_id for b in beats],
                    [b.last_seen for b in beats],
                    [Jsonb(dict(b.labels)) for b in beats],
                    [b.version for b in beats],
                    [b.audit_pending for b in beats],
                    [b.audit_oldest for b in beats],
                    [b.clock_skew for b in beats],
                    [Jsonb(list(b.caps)) for b in beats],
                ),
            )
            found = {r["id"] for r in await cur.fetchall()}
        return [b.node_id for b in beats if b.node_id not in found]


class PgPresence:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def beat(self, node_id: str, hub_id: str, expires: float) -> None:
        await self.beat_many([Presence(node_id, hub_id, expires)])

    async def beat_many(self, leases: Sequence[Presence]) -> None:
        if not leases:
            return
        latest = {(p.node_id, p.hub_id): p.expires for p in leases}  # one row per key
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO presence (node_id, hub_id, expires)"
                " SELECT * FROM unnest(%s::text[], %s::text[], %s::float8[])"
                " ON CONFLICT (node_id, hub_id) DO UPDATE SET expires = excluded.expires",
                (
                    [k[0] for k in latest],
                    [k[1] for k in latest],
                    list(latest.values()),
                ),
            )

    async def drop(self, node_id: str, hub_id: str) -> None:
        async with self._db.tx() as conn:
            await conn.execute(
                "DELETE FROM presence WHERE node_id = %s AND hub_id = %s", (node_id, hub_id)
            )

    async def drop_hub(self, hub_id: str) -> int:
        async with self._db.tx() as conn:
            cur = await conn.execute("DELETE FROM presence WHERE hub_id = %s", (hub_id,))
            return cur.rowcount

    async def holders(self, node_id: str, now: float) -> list[Presence]:
        rows = await self._db.all(
            "SELECT * FROM presence WHERE node_id = %s AND expires > %s ORDER BY hub_id",
            (node_id, now),
        )
        return [Presence(r["node_id"], r["hub_id"], r["expires"]) for r in rows]

    async def all(self, now: float) -> list[Presence]:
        rows = await self._db.all(
            "SELECT * FROM presence WHERE expires > %s ORDER BY node_id, hub_id", (now,)
        )
        return [Presence(r["node_id"], r["hub_id"], r["expires"]) for r in rows]

    async def expire(self, now: float, limit: int) -> int:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "DELETE FROM presence WHERE ctid IN (SELECT ctid FROM presence"
                " WHERE expires < %s LIMIT %s FOR UPDATE SKIP LOCKED)",
                (now, limit),
            )
            return cur.rowcount


class PgLocks:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def add(self, lock: Lock) -> None:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO locks (id, kind, target, message, created, expires, created_by)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    lock.id,
                    lock.kind,
                    lock.target,
                    lock.message,
                    lock.created,
                    lock.expires,
                    lock.created_by,
                ),
            )
            await notify(conn, "locks", lock.id)

    async def all(self, now: float) -> list[Lock]:
        rows = await self._db.all(
            "SELECT * FROM locks WHERE expires IS NULL OR expires > %s ORDER BY created, id",
            (now,),
        )
        return [_lock(r) for r in rows]

    async def delete(self, lock_id: str) -> Lock | None:
        async with self._db.tx() as conn:
            cur = await conn.execute("DELETE FROM locks WHERE id = %s RETURNING *", (lock_id,))
            row = await cur.fetchone()
            if row is None:
                return None
            await notify(conn, "locks", lock_id)
            return _lock(row)
