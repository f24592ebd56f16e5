"""Audit events and session recordings: ``DATA/audit.db``, its own SQLite file.

The file, its schema (``schema/audit/0001_initial.sql``) and its rules are those of
the former ``hub/audit_store.py``, so an ``audit.db`` from before hub/storage opens
unchanged:

* Insert is idempotent on (node, event id): an agent that re-sends a batch after
  a lost ack inserts nothing twice.
* A node's seq is stored once: an event whose (node, seq) is already stored under
  another id is refused and named (:class:`~hub.storage.api.ReusedSeq`).
* ``synchronous=FULL``: a commit the hub acked survives a power cut.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import msgpack

from hub.storage.api import AuditQuery, Inserted, ReusedSeq, StorageError
from hub.storage.sqlite.txdb import TxDb
from remoteler.audit.events import AuditEvent

log = logging.getLogger("remoteler.hub.audit")

AUDIT_DB = "audit.db"

_INSERT = (
    "INSERT OR IGNORE INTO events (node, id, type, time, user, login, session_id, seq, fields)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = "SELECT node, id, type, time, user, login, session_id, seq, fields FROM events"
#: Rows fetched per query when iterating a large search.
PAGE = 1000
#: seq numbers looked up per query when checking a batch for reused ones
_SEQ_CHUNK = 500


def seq_owner_query(n: int) -> str:
    """SELECT (seq, id) of ``n`` seqs of one node: one index probe per seq.

    With a partial index (``WHERE seq > 0``) and ``seq > 0`` in the query, SQLite
    range-scanned every seq of the node instead: a batch cost grew with the trail.
    """
    return f"SELECT seq, id FROM events WHERE node = ? AND seq IN ({','.join('?' * n)})"  # noqa: S608


def _row(node: str, e: AuditEvent) -> tuple[Any, ...]:
    fields = msgpack.packb(dict(e.fields), use_bin_type=True)
    return (node, e.id, e.type, e.time, e.user, e.login, e.session_id, e.seq, fields)


def _event(row: aiosqlite.Row) -> AuditEvent:
    return AuditEvent(
        id=row["id"],
        type=row["type"],
        time=row["time"],
        node=row["node"],
        user=row["user"],
        login=row["login"],
        session_id=row["session_id"],
        seq=row["seq"],
        fields=msgpack.unpackb(row["fields"], raw=False, strict_map_key=False),
    )


async def _announce_new_index(db: TxDb) -> None:
    """Log before ``events_node_seq`` is built over an existing trail (once)."""
    row = await db.fetchone(
        "SELECT (SELECT count(*) FROM sqlite_master WHERE name = 'events'),"
        " (SELECT count(*) FROM sqlite_master WHERE name = 'events_node_seq')"
    )
    if row is None or not row[0] or row[1]:
        return
    log.warning(
        "audit store %s (%d MiB): building the (node, seq) index once (~0.27 s per 50,000"
        " events); the hub listens when it is done",
        db.path,
        db.path.stat().st_size >> 20,
    )


class SQLiteAuditLog:
    """:class:`hub.storage.api.AuditLog` on ``audit.db``."""

    def __init__(self, db: TxDb) -> None:
        self._db = db

    @classmethod
    async def open(cls, data_dir: Path) -> SQLiteAuditLog:
        db = await TxDb.open(data_dir / AUDIT_DB, None, synchronous="FULL")
        try:
            await _announce_new_index(db)
            await db.migrate("audit")
        except BaseException:
            await db.close()
            raise
        return cls(db)

    @property
    def path(self) -> Path:
        return self._db.path

    async def close(self) -> None:
        await self._db.close()

    async def insert_checked(self, node: str, events: Sequence[AuditEvent]) -> Inserted:
        if not events:
            return Inserted(0)
        async with self._db.tx() as conn:
            before = conn.total_changes
            kept, reused = await _split_reused(conn, node, events)
            await conn.executemany(_INSERT, [_row(node, e) for e in kept])
            inserted = conn.total_changes - before
            floor = await _seq_floor(conn, node) if reused else 0
        return Inserted(inserted, tuple(reused), floor)

    async def record(self, event: AuditEvent) -> None:
        await self.insert_checked(event.node, [event])

    async def search(self, query: AuditQuery) -> list[AuditEvent]:
        return [e async for e in self.iter_search(query)]

    async def iter_search(self, query: AuditQuery) -> AsyncIterator[AuditEvent]:
        limit = query.limit
        if limit is not None and limit < 1:
            raise StorageError("limit must be at least 1")
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("type", query.type),
            ("node", query.node),
            ("user", query.user),
            ("session_id", query.session_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if query.since is not None:
            where.append("time >= ?")
            args.append(query.since)
        if query.until is not None:
            where.append("time < ?")
            args.append(query.until)
        newest_first = query.newest_first
        left = limit
        after: tuple[Any, ...] | None = None
        while left is None or left > 0:
            page = PAGE if left is None else min(PAGE, left)
            cond = list(where)
            page_args: list[Any] = list(args)
            if after is not None:  # keyset pagination on the full sort key
                cond.append(f"(time, seq, id, node) {'<' if newest_first else '>'} (?, ?, ?, ?)")
                page_args += after
            sql = _SELECT
            if cond:  # fixed column names; every value is a bound parameter
                sql += " WHERE " + " AND ".join(cond)
            if newest_first:
                sql += " ORDER BY time DESC, seq DESC, id DESC, node DESC LIMIT ?"
            else:
                sql += " ORDER BY time, seq, id, node LIMIT ?"
            rows = await self._db.fetchall(sql, [*page_args, page])
            for row in rows:
                yield _event(row)
            if len(rows) < page:
                return
            last = rows[-1]
            after = (last["time"], last["seq"], last["id"], last["node"])
            if left is not None:
                left -= len(rows)

    async def session(self, session_id: str) -> list[AuditEvent]:
        sql = _SELECT + " WHERE session_id = ? ORDER BY seq, time, id"
        return [_event(r) for r in await self._db.fetchall(sql, (session_id,))]

    async def session_ids(self, prefix: str, user: str | None, limit: int) -> list[str]:
        # A range on the session index, then an exact prefix test (no LIKE wildcards);
        # 'user = coalesce(?, user)' keeps SQLite on the session index (0.01 ms, not
        # 545 ms for a user with 200,000 events).
        sql = (
            "SELECT DISTINCT session_id FROM events WHERE session_id != ''"
            " AND session_id >= ? AND session_id < ? AND substr(session_id, 1, ?) = ?"
            " AND user = coalesce(?, user) ORDER BY session_id LIMIT ?"
        )
        args = (prefix, prefix + "\U0010ffff", len(prefix), prefix, user, limit)
        return [str(r[0]) for r in await self._db.fetchall(sql, args)]

    async def count(self, node: str | None = None) -> int:
        if node is None:
            row = await self._db.fetchone("SELECT count(*) FROM events")
        else:
            row = await self._db.fetchone("SELECT count(*) FROM events WHERE node = ?", (node,))
        return int(row[0]) if row else 0

    async def prune(self, before: float, limit: int) -> int:
        # (node, id) of the oldest events from the time index alone, then by primary key
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "DELETE FROM events WHERE (node, id) IN (SELECT node, id FROM events"
                " WHERE time < ? ORDER BY time LIMIT ?)",
                (before, limit),
            )
            count = cur.rowcount
            await cur.close()
        return count


async def _seq_floor(conn: aiosqlite.Connection, node: str) -> int:
    """The node's highest stored seq + 1 (one probe of ``events_node_seq``)."""
    async with conn.execute("SELECT max(seq) FROM events WHERE node = ?", (node,)) as cur:
        row = await cur.fetchone()
    return int(row[0] or 0) + 1 if row else 1


async def _split_reused(
    conn: aiosqlite.Connection, node: str, events: Sequence[AuditEvent]
) -> tuple[list[AuditEvent], list[ReusedSeq]]:
    seqs = sorted({e.seq for e in events if e.seq > 0})
    owner: dict[int, str] = {}
    for i in range(0, len(seqs), _SEQ_CHUNK):
        chunk = seqs[i : i + _SEQ_CHUNK]
        async with conn.execute(seq_owner_query(len(chunk)), [node, *chunk]) as cur:
            for seq, event_id in await cur.fetchall():
                owner.setdefault(int(seq), str(event_id))
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


def is_empty_file(path: Path) -> bool:
    """A missing or zero-byte audit.db (what ``--accept-empty-audit`` is about)."""
    try:
        return path.stat().st_size == 0
    except FileNotFoundError:
        return True
