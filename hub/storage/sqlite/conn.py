"""One aiosqlite connection shared by the sections of a file, and its error mapping.

Every method of a section is one transaction: a single statement, or a batch
under :meth:`Conn.transaction` (one connection is shared by all coroutines, so a
multi-statement write holds :attr:`Conn.lock` until it commits). ``sqlite3``
errors never leave this package: a constraint becomes
:class:`~hub.storage.api.Conflict`, anything else
:class:`~hub.storage.api.StorageError` with SQLite's words and the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from hub.storage.api import Change, Topic
from hub.storage.feed import ChangeFeed
from hub.storage.sqlite.errors import storage_error

#: Seconds ``BEGIN IMMEDIATE`` is tried again for (as long as the busy timeout).
BEGIN_RETRY_FOR = 30.0

#: Statement parameters: positional or named.
Args = Sequence[Any] | Mapping[str, Any]


@contextlib.contextmanager
def mapped(path: Path) -> Iterator[None]:
    """Turn a ``sqlite3`` error into the storage's own (:mod:`.errors`)."""
    try:
        yield
    except sqlite3.Error as exc:
        raise storage_error(path, exc) from None


class Conn:
    """What a section needs: reads, writes, a transaction, and the change feed."""

    def __init__(self, db: aiosqlite.Connection, path: Path, feed: ChangeFeed) -> None:
        self.db = db
        self.path = path
        self.feed = feed
        #: held by every write: one connection, so one transaction at a time
        self.lock = asyncio.Lock()

    def publish(self, topic: Topic, key: str = "*") -> None:
        self.feed.publish(Change(topic, key))

    async def one(self, sql: str, args: Args = ()) -> aiosqlite.Row | None:
        with mapped(self.path):
            async with self.db.execute(sql, args) as cur:
                return await cur.fetchone()

    async def all(self, sql: str, args: Args = ()) -> list[aiosqlite.Row]:
        with mapped(self.path):
            async with self.db.execute(sql, args) as cur:
                return list(await cur.fetchall())

    async def write(self, sql: str, args: Args = ()) -> int:
        """One statement, committed; the rows it changed."""
        async with self.lock:
            with mapped(self.path):
                try:
                    cur = await self.db.execute(sql, args)
                    count = cur.rowcount
                    await cur.close()
                    await self.db.commit()
                except BaseException:
                    await self.db.rollback()
                    raise
        return count

    async def returning(self, sql: str, args: Args = ()) -> list[aiosqlite.Row]:
        """One ``... RETURNING`` statement, committed; the rows it returned."""
        async with self.lock:
            with mapped(self.path):
                try:
                    async with self.db.execute(sql, args) as cur:
                        rows = list(await cur.fetchall())
                    await self.db.commit()
                except BaseException:
                    await self.db.rollback()
                    raise
        return rows

    async def checkpoint(self) -> None:
        """Move the WAL into the file and empty it (best effort: a reader may hold it);
        with ``secure_delete`` a replaced secret then leaves no copy on disk."""
        async with self.lock:
            with mapped(self.path):
                await self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    async def _begin_immediate(self) -> None:
        """``BEGIN IMMEDIATE``, tried again while another connection holds the write
        lock: SQLite answers "database is locked" at once, without its busy handler,
        in some WAL states (another process's connection racing for the lock right
        after a commit), which ``busy_timeout`` alone does not cover."""
        delay, waited = 0.005, 0.0
        while True:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or waited >= BEGIN_RETRY_FOR:
                    raise
            await asyncio.sleep(delay)
            waited += delay
            delay = min(0.2, delay * 2)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Several statements as one transaction (``BEGIN IMMEDIATE``: the write lock is
        taken first, so two processes never deadlock upgrading a read)."""
        async with self.lock:
            with mapped(self.path):
                try:
                    # inside the try: a caller cancelled while BEGIN runs in aiosqlite's
                    # thread still has it run; the rollback queued after it ends it, or
                    # the connection stays in a transaction ("cannot start a
                    # transaction within a transaction" for every later write)
                    await self._begin_immediate()
                    yield self.db
                except BaseException:
                    await self.db.rollback()
                    raise
                await self.db.commit()
