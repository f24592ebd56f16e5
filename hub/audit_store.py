"""The hub's audit store: its own SQLite file (``DATA/audit.db``), append-only.

Insert is idempotent on (node, event id): an agent that re-sends a batch after
a lost ack inserts nothing twice. A node's seq (its outbox's order) is stored
once: an event whose (node, seq) is already stored under another id is refused
(:meth:`AuditStore.insert_checked` names it), so a device that lost its outbox and
numbers from 1 again cannot blur the order of its trail. The node column is always the node the hub
authenticated (the tunnel's certificate), never what an event claims, so one
device cannot write into another's trail. ``synchronous=FULL``: a commit the
hub acked survives a power cut, not only a crash.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import msgpack

from remoteler.audit.events import AuditEvent

log = logging.getLogger("remoteler.hub.audit")

AUDIT_DB = "audit.db"

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    node TEXT NOT NULL,
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    time REAL NOT NULL,
    user TEXT NOT NULL,
    login TEXT NOT NULL,
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    fields BLOB NOT NULL,
    PRIMARY KEY (node, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_time ON events (time, seq, id, node);
CREATE INDEX IF NOT EXISTS events_session ON events (session_id, seq) WHERE session_id != '';
CREATE INDEX IF NOT EXISTS events_user ON events (user, time);
CREATE INDEX IF NOT EXISTS events_type ON events (type, time);
CREATE INDEX IF NOT EXISTS events_node_seq ON events (node, seq);
"""

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


@dataclass(frozen=True)
class ReusedSeq:
    """An event refused because its node already stored its seq under another id."""

    seq: int
    id: str
    """The refused event's id."""
    stored_id: str
    """The id already stored with that seq."""


@dataclass(frozen=True)
class Inserted:
    """What :meth:`AuditStore.insert_checked` did with a batch."""

    inserted: int
    """Rows new in the store."""
    reused: tuple[ReusedSeq, ...] = ()
    """Events not stored: their seq is another event's (never acked: see audit_ingest)."""
    seq_floor: int = 0
    """With ``reused``: the node's highest stored seq + 1 (where the device may
    renumber the refused events from); 0 otherwise."""


async def _announce_new_index(db: aiosqlite.Connection, path: Path) -> None:
    """Log before ``events_node_seq`` is built over an existing trail (once, at the first
    start of a hub that has it: ~0.27 s per 50,000 events, the hub not yet listening)."""
    async with db.execute(
        "SELECT (SELECT count(*) FROM sqlite_master WHERE name = 'events'),"
        " (SELECT count(*) FROM sqlite_master WHERE name = 'events_node_seq')"
    ) as cur:
        row = await cur.fetchone()
    if row is None or not row[0] or row[1]:
        return
    log.warning(
        "audit store %s (%d MiB): building the (node, seq) index once (~0.27 s per 50,000"
        " events); the hub listens when it is done",
        path,
        path.stat().st_size >> 20,
    )


def audit_db_path(data_dir: Path) -> Path:
    return data_dir / AUDIT_DB


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


#: A session id prefix shorter than this is not looked up (tctl shows 8 characters).
MIN_SESSION_PREFIX = 4
#: How many candidate sessions an ambiguous prefix names.
MAX_CANDIDATES = 5


async def resolve_session_prefix(store: AuditBackend, prefix: str, user: str) -> str:
    """The one session of ``user`` whose id starts with ``prefix``; else ``prefix``.

    Raises UsageError naming up to :data:`MAX_CANDIDATES` ids when several match
    (only ``user``'s own: a prefix reveals nothing about other users' sessions).
    """
    from remoteler.errors import UsageError

    if len(prefix) < MIN_SESSION_PREFIX:
        return prefix
    found = await store.session_ids(prefix, user, MAX_CANDIDATES + 1)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        more = ", ..." if len(found) > MAX_CANDIDATES else ""
        raise UsageError(
            f"session id {prefix[:64]!r} matches several of your sessions "
            f"({', '.join(found[:MAX_CANDIDATES])}{more}); give more characters"
        )
    return prefix


class AuditBackend(Protocol):
    """What the hub needs from audit storage. :class:`AuditStore` (SQLite) is the
    embedded default; a shared database can implement the same methods."""

    async def close(self) -> None: ...
    async def insert(self, node: str, events: Sequence[AuditEvent]) -> int: ...
    async def insert_checked(self, node: str, events: Sequence[AuditEvent]) -> Inserted: ...
    async def record(self, event: AuditEvent) -> None: ...
    async def search(
        self,
        *,
        type: str | None = None,
        node: str | None = None,
        user: str | None = None,
        session_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = 1000,
    ) -> list[AuditEvent]: ...
    async def session(self, session_id: str) -> list[AuditEvent]: ...
    async def session_ids(self, prefix: str, user: str | None, limit: int) -> list[str]: ...
    async def count(self, node: str | None = None) -> int: ...


class AuditStore:
    """The SQLite audit backend. Open with :meth:`open`; one writer transaction at a
    time (``insert``/``record``)."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # One aiosqlite connection is one SQLite transaction: without this, a
        # failing batch's rollback could undo another tunnel's rows after that
        # tunnel had awaited its commit (and acked).
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> AuditStore:
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        elif path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # commands and session output: not for other local users
        db = await aiosqlite.connect(path, timeout=30)
        try:  # a damaged file: close, or its thread keeps the process from exiting
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA busy_timeout=30000")
            await _announce_new_index(db, path)
            await db.executescript(SCHEMA)
            await db.commit()
        except BaseException:
            await db.close()
            raise
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    async def insert(self, node: str, events: Sequence[AuditEvent]) -> int:
        """Store a batch in one transaction under ``node``; return how many rows were new.

        When this returns the batch is durable: only then may it be acked. Events
        whose seq is reused are not stored (:meth:`insert_checked` names them).
        """
        return (await self.insert_checked(node, events)).inserted

    async def insert_checked(self, node: str, events: Sequence[AuditEvent]) -> Inserted:
        """As :meth:`insert`, and say which events were refused for a reused seq.

        The same id again (a re-send) is a no-op as before; a seq (> 0) that
        ``node`` already stored under another id, or that an earlier event of the
        batch took, is refused. Checked and inserted in one transaction.
        """
        if not events:
            return Inserted(0)
        async with self._lock:
            before = self._db.total_changes
            try:
                kept, reused = await self._split_reused(node, events)
                await self._db.executemany(_INSERT, [_row(node, e) for e in kept])
                inserted = self._db.total_changes - before
                floor = await self._seq_floor(node) if reused else 0
                await self._db.commit()
            except BaseException:
                await self._db.rollback()
                raise
        return Inserted(inserted, tuple(reused), floor)

    async def _seq_floor(self, node: str) -> int:
        """The node's highest stored seq + 1 (one probe of ``events_node_seq``)."""
        async with self._db.execute("SELECT max(seq) FROM events WHERE node = ?", (node,)) as cur:
            row = await cur.fetchone()
        return int(row[0] or 0) + 1 if row else 1

    async def _split_reused(
        self, node: str, events: Sequence[AuditEvent]
    ) -> tuple[list[AuditEvent], list[ReusedSeq]]:
        seqs = sorted({e.seq for e in events if e.seq > 0})
        owner: dict[int, str] = {}
        for i in range(0, len(seqs), _SEQ_CHUNK):
            chunk = seqs[i : i + _SEQ_CHUNK]
            async with self._db.execute(seq_owner_query(len(chunk)), [node, *chunk]) as cur:
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

    async def record(self, event: AuditEvent) -> None:
        """Store an event the hub itself produced (``event.node`` is usually ``"hub"``)."""
        await self.insert(event.node, [event])

    async def search(
        self,
        *,
        type: str | None = None,
        node: str | None = None,
        user: str | None = None,
        session_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = 1000,
    ) -> list[AuditEvent]:
        """Events matching every filter given, oldest first (time, seq, id); ``since`` is
        inclusive, ``until`` exclusive. At most ``limit`` (None: all, mind the memory)."""
        return [
            e
            async for e in self.iter_search(
                type=type,
                node=node,
                user=user,
                session_id=session_id,
                since=since,
                until=until,
                limit=limit,
            )
        ]

    async def iter_search(
        self,
        *,
        type: str | None = None,
        node: str | None = None,
        user: str | None = None,
        session_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> AsyncIterator[AuditEvent]:
        """As :meth:`search`, fetched a page at a time (for exports of any size);
        ``newest_first`` walks from the newest event back (``limit`` keeps the newest)."""
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        where: list[str] = []
        args: list[Any] = []
        for column, value in (
            ("type", type),
            ("node", node),
            ("user", user),
            ("session_id", session_id),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("time >= ?")
            args.append(since)
        if until is not None:
            where.append("time < ?")
            args.append(until)
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
            async with self._db.execute(sql, [*page_args, page]) as cur:
                rows = list(await cur.fetchall())
            for row in rows:
                yield _event(row)
            if len(rows) < page:
                return
            last = rows[-1]
            after = (last["time"], last["seq"], last["id"], last["node"])
            if left is not None:
                left -= len(rows)

    async def session(self, session_id: str) -> list[AuditEvent]:
        """Every event of one session in the order its node recorded them (seq)."""
        sql = _SELECT + " WHERE session_id = ? ORDER BY seq, time, id"
        async with self._db.execute(sql, (session_id,)) as cur:
            return [_event(r) for r in await cur.fetchall()]

    async def session_ids(self, prefix: str, user: str | None, limit: int) -> list[str]:
        """Up to ``limit`` distinct ids of ``user``'s sessions (None: anyone's, for
        ``tctl``) starting with ``prefix``, in order (an exact id comes first)."""
        # A range on the session index, then an exact prefix test (no LIKE wildcards).
        # 'user = coalesce(?, user)': None is no filter, and SQLite cannot use the user
        # index for it; with 'user = ?' it walked every event of the user (545 ms for
        # 200,000) instead of the prefix's range (0.01 ms).
        sql = (
            "SELECT DISTINCT session_id FROM events WHERE session_id != ''"
            " AND session_id >= ? AND session_id < ? AND substr(session_id, 1, ?) = ?"
            " AND user = coalesce(?, user) ORDER BY session_id LIMIT ?"
        )
        args = (prefix, prefix + "\U0010ffff", len(prefix), prefix, user, limit)
        async with self._db.execute(sql, args) as cur:
            return [str(r[0]) for r in await cur.fetchall()]

    async def count(self, node: str | None = None) -> int:
        if node is None:
            sql, args = "SELECT count(*) FROM events", []
        else:
            sql, args = "SELECT count(*) FROM events WHERE node = ?", [node]
        async with self._db.execute(sql, args) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
