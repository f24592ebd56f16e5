"""Firmware roll-outs, the trusted signing keys, and blobs (bundles) in 1 MiB chunks."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from hub.storage.api import Conflict, NotFound, Rollout, RolloutNode, TrustedKey
from hub.storage.postgres.db import Db, notify

#: Bytes per blob_chunks row.
CHUNK = 1 << 20


def _rollout(row: DictRow) -> Rollout:
    return Rollout(
        id=row["id"],
        created=row["created"],
        name=row["name"],
        version=row["version"],
        bundle=row["bundle"],
        sha256=row["sha256"],
        size=row["size"],
        selector=dict(row["selector"]),
        canary_percent=row["canary_percent"],
        max_parallel=row["max_parallel"],
        rate=row["rate"],
        force=row["force"],
        state=row["state"],
        reason=row["reason"],
        finished=row["finished"],
        canary_timeout=row["canary_timeout"],
    )


def _rollout_node(row: DictRow) -> RolloutNode:
    return RolloutNode(
        rollout=row["rollout"],
        node_id=row["node_id"],
        node_name=row["node_name"],
        canary=row["canary"],
        state=row["state"],
        detail=row["detail"],
        progress=row["progress"],
        resumed_from=row["resumed_from"],
        attempts=row["attempts"],
        updated=row["updated"],
        claims=row["claims"],
    )


class PgFirmware:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def create(self, rollout: Rollout, nodes: Sequence[tuple[str, str, bool]]) -> None:
        r = rollout
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO rollouts (id, created, name, version, bundle, sha256, size,"
                " selector, canary_percent, max_parallel, rate, force, state, reason, finished,"
                " canary_timeout) VALUES"
                " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    r.id,
                    r.created,
                    r.name,
                    r.version,
                    r.bundle,
                    r.sha256,
                    r.size,
                    Jsonb(dict(r.selector)),
                    r.canary_percent,
                    r.max_parallel,
                    r.rate,
                    r.force,
                    r.state,
                    r.reason,
                    r.finished,
                    r.canary_timeout,
                ),
            )
            if nodes:
                await conn.execute(
                    "INSERT INTO rollout_nodes (rollout, node_id, node_name, canary, state,"
                    " updated) SELECT %s, n.id, n.name, n.canary, 'pending', %s"
                    " FROM unnest(%s::text[], %s::text[], %s::boolean[]) AS n(id, name, canary)",
                    (
                        r.id,
                        r.created,
                        [n[0] for n in nodes],
                        [n[1] for n in nodes],
                        [bool(n[2]) for n in nodes],
                    ),
                )
            await notify(conn, "firmware", r.id)

    async def rollouts(self, state: str | None = None) -> list[Rollout]:
        rows = await self._db.all(
            "SELECT * FROM rollouts WHERE %(state)s::text IS NULL OR state = %(state)s"
            " ORDER BY created, id",
            {"state": state},
        )
        return [_rollout(r) for r in rows]

    async def rollout(self, rollout_id: str) -> Rollout | None:
        row = await self._db.one("SELECT * FROM rollouts WHERE id = %s", (rollout_id,))
        return _rollout(row) if row else None

    async def nodes(self, rollout_id: str) -> list[RolloutNode]:
        rows = await self._db.all(
            "SELECT * FROM rollout_nodes WHERE rollout = %s ORDER BY canary DESC, node_name",
            (rollout_id,),
        )
        return [_rollout_node(r) for r in rows]

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
                "UPDATE rollout_nodes SET state = %(state)s, detail = %(detail)s,"
                " updated = %(now)s, progress = coalesce(%(progress)s::bigint, progress),"
                " resumed_from = greatest(resumed_from, coalesce(%(resumed)s::bigint, 0)),"
                " attempts = attempts + %(attempt)s"
                " WHERE rollout = %(rollout)s AND node_id = %(node)s"
                " AND (%(expect)s::text IS NULL OR state = %(expect)s)",
                {
                    "state": state,
                    "detail": detail[:400],
                    "now": now,
                    "progress": progress,
                    "resumed": resumed_from,
                    "attempt": int(attempt),
                    "rollout": rollout_id,
                    "node": node_id,
                    "expect": expect,
                },
            )
            if cur.rowcount:
                await notify(conn, "firmware", rollout_id)
            return cur.rowcount > 0

    async def claim(self, rollout_id: str, node_id: str, claims: int, now: float) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "UPDATE rollout_nodes SET claims = claims + 1, updated = %s"
                " WHERE rollout = %s AND node_id = %s AND claims = %s"
                " AND state NOT IN ('installed', 'failed', 'rolled-back')"
                " AND EXISTS (SELECT 1 FROM rollouts WHERE id = %s AND state = 'running')",
                (now, rollout_id, node_id, claims, rollout_id),
            )
            if cur.rowcount:
                await notify(conn, "firmware", rollout_id)
            return cur.rowcount > 0

    async def replace_canary(
        self, rollout_id: str, old_id: str, new_id: str, detail: str, now: float
    ) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "UPDATE rollout_nodes SET canary = true, updated = %s"
                " WHERE rollout = %s AND node_id = %s AND NOT canary AND state = 'pending'"
                " AND EXISTS (SELECT 1 FROM rollouts WHERE id = %s AND state = 'running')",
                (now, rollout_id, new_id, rollout_id),
            )
            if cur.rowcount == 0:
                return False
            await conn.execute(
                "UPDATE rollout_nodes SET canary = false, detail = %s, updated = %s"
                " WHERE rollout = %s AND node_id = %s",
                (detail[:400], now, rollout_id, old_id),
            )
            await notify(conn, "firmware", rollout_id)
            return True

    async def finish(self, rollout_id: str, state: str, reason: str, now: float) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "UPDATE rollouts SET state = %s, reason = %s, finished = %s"
                " WHERE id = %s AND state = 'running'",
                (state, reason[:400], now, rollout_id),
            )
            if cur.rowcount:
                await notify(conn, "firmware", rollout_id)
            return cur.rowcount > 0


class PgTrustedKeys:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def all(self) -> list[TrustedKey]:
        rows = await self._db.all("SELECT * FROM trusted_keys ORDER BY added, fingerprint")
        return [
            TrustedKey(r["fingerprint"], r["public_key"], r["comment"], r["added"]) for r in rows
        ]

    async def add(self, key: TrustedKey) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "INSERT INTO trusted_keys (fingerprint, public_key, comment, added)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (key.fingerprint, key.public_key, key.comment, key.added),
            )
            if cur.rowcount:
                await notify(conn, "trusted", key.fingerprint)
            return cur.rowcount > 0

    async def remove(self, fingerprint: str) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "DELETE FROM trusted_keys WHERE fingerprint = %s", (fingerprint,)
            )
            if cur.rowcount:
                await notify(conn, "trusted", fingerprint)
            return cur.rowcount > 0


class PgBlobs:
    """A blob is written in one transaction, a chunk row at a time as its bytes arrive
    (memory: one chunk); it becomes visible (its ``blobs`` row) only when its hash
    checks, so a reader never sees a partial one."""

    def __init__(self, db: Db) -> None:
        self._db = db

    async def put(self, name: str, chunks: AsyncIterator[bytes], max_size: int) -> int:
        digest = hashlib.sha256()
        size = 0
        async with self._db.tx() as conn:
            # one writer per name at a time (two hubs receiving the same bundle)
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('blob:' || %s))", (name,))
            cur = await conn.execute("SELECT size FROM blobs WHERE name = %s", (name,))
            exists = await cur.fetchone() is not None
            if not exists:
                await conn.execute("DELETE FROM blob_chunks WHERE name = %s", (name,))
            buffer = bytearray()
            n = 0
            async for data in chunks:
                size += len(data)
                if size > max_size:
                    raise Conflict(f"blob is larger than {max_size} bytes: not stored")
                digest.update(data)
                buffer += data
                while len(buffer) >= CHUNK:
                    if not exists:
                        await conn.execute(
                            "INSERT INTO blob_chunks (name, n, data) VALUES (%s, %s, %s)",
                            (name, n, bytes(buffer[:CHUNK])),
                        )
                    del buffer[:CHUNK]
                    n += 1
            if digest.hexdigest() != name:
                raise Conflict("blob does not hash to its name: not stored")
            if not exists:
                if buffer:
                    await conn.execute(
                        "INSERT INTO blob_chunks (name, n, data) VALUES (%s, %s, %s)",
                        (name, n, bytes(buffer)),
                    )
                await conn.execute("INSERT INTO blobs (name, size) VALUES (%s, %s)", (name, size))
        return size

    async def size(self, name: str) -> int | None:
        row = await self._db.one("SELECT size FROM blobs WHERE name = %s", (name,))
        return int(row["size"]) if row else None

    async def read(self, name: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        async with self._db.tx() as conn:
            cur = await conn.execute("SELECT size FROM blobs WHERE name = %s", (name,))
            row = await cur.fetchone()
            if row is None:
                raise NotFound(f"no blob {name[:16]}")
            end = min(int(row["size"]), offset + length)
            if end <= offset:
                return b""
            cur = await conn.execute(
                "SELECT n, data FROM blob_chunks WHERE name = %s AND n BETWEEN %s AND %s"
                " ORDER BY n",
                (name, offset // CHUNK, (end - 1) // CHUNK),
            )
            parts = [bytes(r["data"]) for r in await cur.fetchall()]
        start = offset - (offset // CHUNK) * CHUNK
        return b"".join(parts)[start : start + (end - offset)]

    async def delete(self, name: str) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute("DELETE FROM blobs WHERE name = %s", (name,))
            await conn.execute("DELETE FROM blob_chunks WHERE name = %s", (name,))
            return cur.rowcount > 0

    async def names(self) -> list[str]:
        rows = await self._db.all("SELECT name FROM blobs ORDER BY name")
        return [r["name"] for r in rows]
