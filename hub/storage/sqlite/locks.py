"""Locks (``tctl lock``) in ``hub.db``; every change is published on topic ``locks``."""

from __future__ import annotations

import aiosqlite

from hub.storage.sqlite.conn import Conn
from remoteler.locks import Lock


def _lock(row: aiosqlite.Row) -> Lock:
    return Lock(
        id=row["id"],
        kind=row["kind"],
        target=row["target"],
        message=row["message"],
        created=row["created"],
        expires=row["expires"],
        created_by=row["created_by"],
    )


class SQLiteLocks:
    def __init__(self, conn: Conn) -> None:
        self._c = conn

    async def add(self, lock: Lock) -> None:
        await self._c.write(
            "INSERT INTO locks VALUES (?, ?, ?, ?, ?, ?, ?)",
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
        self._c.publish("locks", lock.id)

    async def all(self, now: float) -> list[Lock]:
        """Oldest first; expired ones are left out (and left in the table)."""
        rows = await self._c.all(
            "SELECT * FROM locks WHERE expires IS NULL OR expires > ? ORDER BY created, id",
            (now,),
        )
        return [_lock(r) for r in rows]

    async def delete(self, lock_id: str) -> Lock | None:
        rows = await self._c.returning("DELETE FROM locks WHERE id = ? RETURNING *", (lock_id,))
        if not rows:
            return None
        self._c.publish("locks", lock_id)
        return _lock(rows[0])
