"""SSO connectors and short-lived SSO state in ``hub.db`` (schema ``0006_sso.sql``).

A connector's change is published on topic ``connectors``. SSO state is not
published: a hub reads it only when a browser comes back with its key.

:meth:`SQLiteSSOStates.add` checks the key and the cap and inserts in one
``BEGIN IMMEDIATE`` transaction: SQLite's write lock covers every connection
to the file, so two hubs on one data dir never both pass the cap. Counting
stops at ``cap`` rows (a ``LIMIT`` in the count), so a full table costs no more
than ``cap`` index entries per call. A key may be a login's state token: no
message here names it.
"""

from __future__ import annotations

import aiosqlite

from hub.storage.api import Conflict, StoredConnector, sso_kind_range
from hub.storage.sqlite.conn import Conn


def _connector(row: aiosqlite.Row) -> StoredConnector:
    return StoredConnector(row["name"], row["kind"], row["spec"], row["created"])


class SQLiteConnectors:
    def __init__(self, conn: Conn) -> None:
        self._c = conn

    async def get(self, name: str) -> StoredConnector | None:
        row = await self._c.one("SELECT * FROM connectors WHERE name = ?", (name,))
        return _connector(row) if row else None

    async def all(self) -> list[StoredConnector]:
        rows = await self._c.all("SELECT * FROM connectors ORDER BY name")
        return [_connector(r) for r in rows]

    async def put(self, connector: StoredConnector) -> None:
        await self._c.write(
            "INSERT OR REPLACE INTO connectors (name, kind, spec, created) VALUES (?, ?, ?, ?)",
            (connector.name, connector.kind, connector.spec, connector.created),
        )
        self._c.publish("connectors", connector.name)

    async def delete(self, name: str) -> bool:
        deleted = await self._c.write("DELETE FROM connectors WHERE name = ?", (name,)) > 0
        if deleted:
            self._c.publish("connectors", name)
        return deleted


class SQLiteSSOStates:
    """An entry is live while ``expires > now``; an expired one is as good as absent."""

    def __init__(self, conn: Conn) -> None:
        self._c = conn

    async def add(self, key: str, value: str, expires: float, now: float, cap: int) -> bool:
        async with self._c.transaction() as db:
            async with db.execute(
                "SELECT 1 FROM sso_state WHERE key = ? AND expires > ?", (key, now)
            ) as cur:
                if await cur.fetchone() is not None:
                    raise Conflict("this SSO state key is stored already: make a new one")
            low, high = sso_kind_range(key)
            async with db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM sso_state"
                " WHERE key >= ? AND key < ? AND expires > ? LIMIT ?)",
                (low, high, now, max(cap, 0)),
            ) as cur:
                row = await cur.fetchone()
            if row is None or row[0] >= cap:
                return False
            # an expired row of the same key is replaced (as if pruned first)
            await db.execute(
                "INSERT OR REPLACE INTO sso_state (key, value, expires) VALUES (?, ?, ?)",
                (key, value, expires),
            )
        return True

    async def take(self, key: str, now: float) -> str | None:
        rows = await self._c.returning(
            "DELETE FROM sso_state WHERE key = ? RETURNING value, expires", (key,)
        )
        if not rows or rows[0]["expires"] <= now:
            return None  # missing, or expired (and now deleted)
        return str(rows[0]["value"])

    async def prune(self, now: float, limit: int) -> int:
        return await self._c.write(
            "DELETE FROM sso_state WHERE rowid IN"
            " (SELECT rowid FROM sso_state WHERE expires <= ? LIMIT ?)",
            (now, limit),
        )
