"""SSO connectors and short-lived SSO state (schema ``0005_sso.sql``).

As the SQLite engine (``hub/storage/sqlite/sso.py``): a connector's change is
announced on topic ``connectors``; SSO state is not announced. A key may be a
login's state token: no message here names it.

:meth:`PgSSOStates.add` is exact under concurrency: every add takes one
transaction-scoped advisory lock (:data:`ADD_LOCK`) before it checks the key and
counts, so adds by any number of hubs run one after another and the cap is never
passed. A take or a prune running meanwhile only deletes rows, which can make the
count smaller, never larger. Adds are one per login started (rare next to the
lock's cost); the count stops at ``cap`` rows.
"""

from __future__ import annotations

from psycopg.rows import DictRow

from hub.storage.api import Conflict, StoredConnector, sso_kind_range
from hub.storage.postgres.db import Db, notify

#: pg_advisory_xact_lock key serialising :meth:`PgSSOStates.add` ("rsso" in ASCII);
#: another constant than the migrations' lock (hub/storage/postgres/migrate.py).
ADD_LOCK = 0x7273736F


def _connector(row: DictRow) -> StoredConnector:
    return StoredConnector(row["name"], row["kind"], row["spec"], row["created"])


class PgConnectors:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def get(self, name: str) -> StoredConnector | None:
        row = await self._db.one("SELECT * FROM connectors WHERE name = %s", (name,))
        return _connector(row) if row else None

    async def all(self) -> list[StoredConnector]:
        rows = await self._db.all("SELECT * FROM connectors ORDER BY name")
        return [_connector(r) for r in rows]

    async def put(self, connector: StoredConnector) -> None:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO connectors (name, kind, spec, created) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET kind = excluded.kind,"
                " spec = excluded.spec, created = excluded.created",
                (connector.name, connector.kind, connector.spec, connector.created),
            )
            await notify(conn, "connectors", connector.name)

    async def delete(self, name: str) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute("DELETE FROM connectors WHERE name = %s", (name,))
            if cur.rowcount:
                await notify(conn, "connectors", name)
            return cur.rowcount > 0


class PgSSOStates:
    """An entry is live while ``expires > now``; an expired one is as good as absent."""

    def __init__(self, db: Db) -> None:
        self._db = db

    async def add(self, key: str, value: str, expires: float, now: float, cap: int) -> bool:
        async with self._db.tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADD_LOCK,))
            cur = await conn.execute(
                "SELECT 1 AS live FROM sso_state WHERE key = %s AND expires > %s", (key, now)
            )
            if await cur.fetchone() is not None:
                raise Conflict("this SSO state key is stored already: make a new one")
            low, high = sso_kind_range(key)
            cur = await conn.execute(
                "SELECT count(*) AS n FROM (SELECT 1 FROM sso_state"
                " WHERE key >= %s AND key < %s AND expires > %s LIMIT %s) AS live",
                (low, high, now, max(cap, 0)),
            )
            row = await cur.fetchone()
            if row is None or row["n"] >= cap:
                return False
            # an expired row of the same key is replaced (as if pruned first)
            await conn.execute(
                "INSERT INTO sso_state (key, value, expires) VALUES (%s, %s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                " expires = excluded.expires",
                (key, value, expires),
            )
            return True

    async def take(self, key: str, now: float) -> str | None:
        row = await self._db.one(
            "DELETE FROM sso_state WHERE key = %s RETURNING value, expires", (key,)
        )
        if row is None or row["expires"] <= now:
            return None  # missing, or expired (and now deleted)
        return str(row["value"])

    async def prune(self, now: float, limit: int) -> int:
        rows = await self._db.all(
            "DELETE FROM sso_state WHERE key IN (SELECT key FROM sso_state"
            " WHERE expires <= %s LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING key",
            (now, limit),
        )
        return len(rows)
