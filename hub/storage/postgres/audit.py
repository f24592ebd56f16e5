"""Audit events and session recordings, idempotent on (node, id).

The semantics of ``hub/storage/sqlite/audit.py`` (the SQLite engine's): a re-sent
event is a no-op; a seq (> 0) that the node already stored under another id, or
that an earlier event of the batch took, is refused and named. The check and the
insert are one transaction holding a per-node advisory lock, so two hubs
ingesting the same node's batches at once cannot both take one seq.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgpack
from psycopg.rows import DictRow

from hub.storage.api import AuditQuery, Inserted, ReusedSeq
from hub.storage.postgres.db import Conn, Db
from remoteler.audit.events import AuditEvent

_COLUMNS = "node, id, type, time, username, login, session_id, seq, fields"
_SELECT = f"SELECT {_COLUMNS} FROM events"  # noqa: S608 - fixed names
#: Rows fetched per query when iterating a large search.
PAGE = 1000


def _event(row: DictRow) -> AuditEvent:
    return AuditEvent(
        id=row["id"],
        type=row["type"],
        time=row["time"],
        node=row["node"],
        user=row["username"],
        login=row["login"],
        session_id=row["session_id"],
        seq=row["seq"],
        fields=msgpack.unpackb(row["fields"], raw=False, strict_map_key=False),
    )


class PgAudit:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def insert_checked(self, node: str, events: Sequence[AuditEvent]) -> Inserted:
        if not events:
            return Inserted(0)
        async with self._db.tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('audit:' || %s))", (node,))
            kept, reused = await _split_reused(conn, node, events)
            inserted = 0
            if kept:
                cur = await conn.execute(
                    f"INSERT INTO events ({_COLUMNS})"  # noqa: S608 - fixed names
                    " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[],"
                    " %s::text[], %s::text[], %s::text[], %s::bigint[], %s::bytea[])"
                    " ON CONFLICT (node, id) DO NOTHING",
                    (
                        [node] * len(kept),
                        [e.id for e in kept],
                        [e.type for e in kept],
                        [e.time for e in kept],
                        [e.user for e in kept],
                        [e.login for e in kept],
                        [e.session_id for e in kept],
                        [e.seq for e in kept],
                        [msgpack.packb(dict(e.fields), use_bin_type=True) for e in kept],
                    ),
                )
                inserted = cur.rowcount
            floor = 0
            if reused:
                cur = await conn.execute(
                    "SELECT coalesce(max(seq), 0) + 1 AS floor FROM events WHERE node = %s",
                    (node,),
                )
                row = await cur.fetchone()
                floor = int(row["floor"]) if row else 1
        return Inserted(inserted, tuple(reused), floor)

    async def record(self, event: AuditEvent) -> None:
        await self.insert_checked(event.node, [event])

    async def search(self, query: AuditQuery) -> list[AuditEvent]:
        return [e async for e in self.iter_search(query)]

    async def iter_search(self, query: AuditQuery) -> AsyncIterator[AuditEvent]:
        limit = query.limit
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("type", query.type),
            ("node", query.node),
            ("username", query.user),
            ("session_id", query.session_id),
        ):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(value)
        if query.since is not None:
            where.append("time >= %s")
            args.append(query.since)
        if query.until is not None:
            where.append("time < %s")
            args.append(query.until)
        newest = query.newest_first
        left = limit
        after: tuple[Any, ...] | None = None
        while left is None or left > 0:
            page = PAGE if left is None else min(PAGE, left)
            cond = list(where)
            page_args = list(args)
            if after is not None:  # keyset pagination on the full sort key
                cond.append(f"(time, seq, id, node) {'<' if newest else '>'} (%s, %s, %s, %s)")
                page_args += after
            sql = _SELECT
            if cond:  # fixed column names; every value is a bound parameter
                sql += " WHERE " + " AND ".join(cond)
            order = "DESC" if newest else "ASC"
            sql += f" ORDER BY time {order}, seq {order}, id {order}, node {order} LIMIT %s"
            rows = await self._db.all(sql, [*page_args, page])
            for row in rows:
                yield _event(row)
            if len(rows) < page:
                return
            last = rows[-1]
            after = (last["time"], last["seq"], last["id"], last["node"])
            if left is not None:
                left -= len(rows)

    async def session(self, session_id: str) -> list[AuditEvent]:
        rows = await self._db.all(
            _SELECT + " WHERE session_id = %s ORDER BY seq, time, id", (session_id,)
        )
        return [_event(r) for r in rows]

    async def session_ids(self, prefix: str, user: str | None, limit: int) -> list[str]:
        # a range on the prefix index, then an exact prefix test (no LIKE wildcards)
        rows = await self._db.all(
            "SELECT DISTINCT session_id FROM events WHERE session_id <> ''"
            " AND session_id ~>=~ %(p)s AND left(session_id, %(n)s) = %(p)s"
            " AND (%(user)s::text IS NULL OR username = %(user)s)"
            " ORDER BY session_id LIMIT %(limit)s",
            {"p": prefix, "n": len(prefix), "user": user, "limit": limit},
        )
        return [str(r["session_id"]) for r in rows]

    async def count(self, node: str | None = None) -> int:
        if node is None:
            row = await self._db.one("SELECT count(*) AS n FROM events")
        else:
            row = await self._db.one("SELECT count(*) AS n FROM events WHERE node = %s", (node,))
        return int(row["n"]) if row else 0

    async def prune(self, before: float, limit: int) -> int:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "DELETE FROM events WHERE (node, id) IN (SELECT node, id FROM events"
                " WHERE time < %s ORDER BY time LIMIT %s FOR UPDATE SKIP LOCKED)",
                (before, limit),
            )
            return cur.rowcount


async def _split_reused(
    conn: Conn, node: str, events: Sequence[AuditEvent]
) -> tuple[list[AuditEvent], list[ReusedSeq]]:
    seqs = sorted({e.seq for e in events if e.seq > 0})
    owner: dict[int, str] = {}
    if seqs:
        cur = await conn.execute(
            "SELECT seq, id FROM events WHERE node = %s AND seq = ANY(%s::bigint[])"
            " ORDER BY seq, id",
            (node, seqs),
        )
        for row in await cur.fetchall():
            owner.setdefault(int(row["seq"]), str(row["id"]))
    kept: list[AuditEvent] = []
    reused: list[ReusedSeq] = []
    for e in events:
        if e.seq > 0:
            stored = owner.setdefault(e.seq, e.id)
            if stored != e.id:
                reused.append(ReusedSeq(e.seq, e.id, stored))
                continue
        kept.append(e)
    return kept, reused
