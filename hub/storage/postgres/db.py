"""The pool every section shares: one method, one transaction, errors translated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

from hub.storage.api import Topic
from hub.storage.postgres.errors import translate

#: The NOTIFY channel of the change feed; the payload is ``topic:key``.
CHANNEL = "remoteler_changes"

Conn = AsyncConnection[DictRow]


class Db:
    def __init__(self, pool: AsyncConnectionPool[Conn], where: str) -> None:
        self.pool = pool
        #: ``host:port/db`` for messages
        self.where = where

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[Conn]:
        """A connection in a transaction: committed when the block ends, rolled back if
        it raises; psycopg's errors become :class:`~hub.storage.api.StorageError`."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                yield conn
        except Exception as exc:
            raise translate(exc, self.where) from None

    async def one(self, sql: Any, args: Any = ()) -> DictRow | None:
        async with self.tx() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchone()

    async def all(self, sql: Any, args: Any = ()) -> list[DictRow]:
        async with self.tx() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchall()


async def notify(conn: Conn, topic: Topic, key: str = "*") -> None:
    """Publish ``topic:key`` when ``conn``'s transaction commits (nothing if it rolls back)."""
    await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{topic}:{key}"[:7000]))
