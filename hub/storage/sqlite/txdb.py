"""One aiosqlite connection shared by part B's sections, one transaction at a time.

An aiosqlite connection is one SQLite transaction: two coroutines writing through
it at once would commit or roll back each other's rows. :class:`TxDb` serialises
them with an asyncio lock; :meth:`TxDb.tx` is ``BEGIN IMMEDIATE`` (the file's
write lock taken first, so a compare-and-set read inside it cannot go stale
before the write), commit on success, rollback on any error. SQLite's
exceptions become :class:`~hub.storage.api.StorageError` with the file named.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiosqlite

from hub.storage.api import Conflict
from hub.storage.sqlite.errors import storage_error
from hub.storage.sqlite.migrate import migrate

#: seconds a statement waits for another process's write lock (tctl, a second hub)
BUSY_TIMEOUT = 30.0


class TxDb:
    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self.lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, schema: str | None, *, synchronous: str = "NORMAL") -> TxDb:
        """Open ``path`` (created 0600), WAL, and apply ``schema``'s migrations
        (None: the caller migrates, e.g. the engine's hub.db)."""
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        elif path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # secrets and session output: not for other local users
        try:
            conn = await aiosqlite.connect(path, timeout=BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            raise storage_error(path, exc, doing="opened") from None
        try:  # a damaged file: close, or its thread keeps the process from exiting
            conn.row_factory = aiosqlite.Row
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute(f"PRAGMA synchronous={synchronous}")
            await conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
            db = cls(conn, path)
            if schema is not None:
                await db.migrate(schema)
        except sqlite3.Error as exc:
            await conn.close()
            raise storage_error(path, exc, doing="opened") from None
        except BaseException:
            await conn.close()
            raise
        return db

    async def migrate(self, schema: str) -> list[str]:
        async with self.lock:
            try:
                return await migrate(self.conn, schema, str(self.path))
            except sqlite3.Error as exc:  # reading the version: the file's own trouble
                raise storage_error(self.path, exc, doing="opened") from None

    async def close(self) -> None:
        await self.conn.close()

    @contextlib.asynccontextmanager
    async def tx(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``), committed when the block ends."""
        async with self.lock:
            try:
                await self.conn.execute("BEGIN IMMEDIATE")
                yield self.conn
                await self.conn.commit()
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error, ValueError):
                    await self.conn.rollback()
                if isinstance(exc, sqlite3.IntegrityError):
                    raise Conflict(f"{self.path}: {exc}") from None
                if isinstance(exc, sqlite3.Error):
                    raise storage_error(self.path, exc) from None
                raise

    async def fetchall(self, sql: str, args: Iterable[Any] = ()) -> list[aiosqlite.Row]:
        async with self.lock:
            try:
                async with self.conn.execute(sql, tuple(args)) as cur:
                    return list(await cur.fetchall())
            except sqlite3.Error as exc:
                raise storage_error(self.path, exc) from None

    async def fetchone(self, sql: str, args: Iterable[Any] = ()) -> aiosqlite.Row | None:
        rows = await self.fetchall(sql, args)
        return rows[0] if rows else None

    async def data_version(self) -> int:
        """Changes when another connection (another process) commits to the file."""
        row = await self.fetchone("PRAGMA data_version")
        return int(row[0]) if row else 0
