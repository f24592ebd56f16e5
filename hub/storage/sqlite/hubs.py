"""The cluster's hubs and its named leases in ``hub.db`` (schema ``0004_hubs_leases.sql``).

Every write is a ``BEGIN IMMEDIATE`` transaction (:meth:`Conn.transaction`): two
hubs on one file then wait for each other (busy timeout) instead of failing
with "database is locked" when a deferred transaction's snapshot went stale.

A hub's beat is published on topic ``hubs`` only when the hub is new or changed
what others dial or show (addresses, start, version), not at every renewal; a
drop or an expiry always is. A lease is published on topic ``leases`` when it
changes hands (taken fresh or over) or is released, not when it is renewed.
"""

from __future__ import annotations

import aiosqlite

from hub.storage.api import HubRecord, Lease
from hub.storage.sqlite.conn import Conn

#: What a beat changes that other hubs care about (published when it differs).
_SHOWN = ("public_addr", "peer_addr", "started", "version")


def _hub(row: aiosqlite.Row) -> HubRecord:
    return HubRecord(
        id=row["id"],
        public_addr=row["public_addr"],
        peer_addr=row["peer_addr"],
        started=row["started"],
        expires=row["expires"],
        agents=row["agents"],
        version=row["version"],
        beat_at=row["beat_at"],
    )


def _lease(row: aiosqlite.Row) -> Lease:
    return Lease(row["name"], row["holder"], row["expires"], row["acquired"])


class SQLiteHubs:
    def __init__(self, conn: Conn) -> None:
        self._c = conn

    async def beat(self, hub: HubRecord) -> None:
        async with self._c.transaction() as db:
            async with db.execute(
                "SELECT public_addr, peer_addr, started, version FROM hubs WHERE id = ?",
                (hub.id,),
            ) as cur:
                old = await cur.fetchone()
            await db.execute(
                "INSERT INTO hubs (id, public_addr, peer_addr, started, expires, agents,"
                " version, beat_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET public_addr = excluded.public_addr,"
                " peer_addr = excluded.peer_addr, started = excluded.started,"
                " expires = excluded.expires, agents = excluded.agents,"
                " version = excluded.version, beat_at = excluded.beat_at",
                (
                    hub.id,
                    hub.public_addr,
                    hub.peer_addr,
                    hub.started,
                    hub.expires,
                    hub.agents,
                    hub.version,
                    hub.beat_at,
                ),
            )
        if old is None or tuple(old) != tuple(getattr(hub, f) for f in _SHOWN):
            self._c.publish("hubs", hub.id)

    async def live(self, now: float) -> list[HubRecord]:
        rows = await self._c.all("SELECT * FROM hubs WHERE expires > ? ORDER BY id", (now,))
        return [_hub(r) for r in rows]

    async def get(self, hub_id: str) -> HubRecord | None:
        row = await self._c.one("SELECT * FROM hubs WHERE id = ?", (hub_id,))
        return _hub(row) if row else None

    async def drop(self, hub_id: str) -> bool:
        async with self._c.transaction() as db:
            cur = await db.execute("DELETE FROM hubs WHERE id = ?", (hub_id,))
            gone = cur.rowcount
            await cur.close()
        if not gone:
            return False
        self._c.publish("hubs", hub_id)
        return True

    async def expire(self, now: float, limit: int) -> int:
        async with (
            self._c.transaction() as db,
            db.execute(
                "DELETE FROM hubs WHERE id IN (SELECT id FROM hubs WHERE expires <= ? LIMIT ?)"
                " RETURNING id",
                (now, limit),
            ) as cur,
        ):
            rows = list(await cur.fetchall())
        for row in rows:
            self._c.publish("hubs", row[0])
        return len(rows)


#: Take or renew in one statement: the conflict's update applies only when the lease is
#: the caller's or lapsed; RETURNING gives a row exactly when the caller holds it now.
_ACQUIRE = (
    "INSERT INTO leases (name, holder, expires, acquired) VALUES (?1, ?2, ?3, ?4)"
    " ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
    " expires = excluded.expires,"
    " acquired = CASE WHEN leases.holder = excluded.holder THEN leases.acquired"
    " ELSE excluded.acquired END"
    " WHERE leases.holder = excluded.holder OR leases.expires <= ?4"
    " RETURNING acquired"
)


class SQLiteLeases:
    def __init__(self, conn: Conn) -> None:
        self._c = conn

    async def acquire(self, name: str, holder: str, expires: float, now: float) -> bool:
        async with (
            self._c.transaction() as db,
            db.execute(_ACQUIRE, (name, holder, expires, now)) as cur,
        ):
            row = await cur.fetchone()
        if row is None:
            return False
        if row[0] == now:  # taken now (fresh or from a lapsed holder), not renewed
            self._c.publish("leases", name)
        return True

    async def release(self, name: str, holder: str) -> bool:
        async with self._c.transaction() as db:
            cur = await db.execute(
                "DELETE FROM leases WHERE name = ? AND holder = ?", (name, holder)
            )
            gone = cur.rowcount
            await cur.close()
        if not gone:
            return False
        self._c.publish("leases", name)
        return True

    async def get(self, name: str) -> Lease | None:
        row = await self._c.one("SELECT * FROM leases WHERE name = ?", (name,))
        return _lease(row) if row else None

    async def all(self) -> list[Lease]:
        return [_lease(r) for r in await self._c.all("SELECT * FROM leases ORDER BY name")]
