"""The cluster's hubs and its named leases (schema ``0003_hubs_leases.sql``).

As the SQLite engine (``hub/storage/sqlite/hubs.py``): a beat is announced on
topic ``hubs`` only when the hub is new or changed what others dial or show; a
lease on topic ``leases`` when it changes hands or is released, not when renewed.
"""

from __future__ import annotations

from psycopg.rows import DictRow

from hub.storage.api import HubRecord, Lease
from hub.storage.postgres.db import Db, notify

#: What a beat changes that other hubs care about (announced when it differs).
_SHOWN = ("public_addr", "peer_addr", "started", "version")


def _hub(row: DictRow) -> HubRecord:
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


def _lease(row: DictRow) -> Lease:
    return Lease(row["name"], row["holder"], row["expires"], row["acquired"])


class PgHubs:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def beat(self, hub: HubRecord) -> None:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "SELECT public_addr, peer_addr, started, version FROM hubs WHERE id = %s",
                (hub.id,),
            )
            old = await cur.fetchone()
            await conn.execute(
                "INSERT INTO hubs (id, public_addr, peer_addr, started, expires, agents,"
                " version, beat_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
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
            if old is None or any(old[f] != getattr(hub, f) for f in _SHOWN):
                await notify(conn, "hubs", hub.id)

    async def live(self, now: float) -> list[HubRecord]:
        rows = await self._db.all("SELECT * FROM hubs WHERE expires > %s ORDER BY id", (now,))
        return [_hub(r) for r in rows]

    async def get(self, hub_id: str) -> HubRecord | None:
        row = await self._db.one("SELECT * FROM hubs WHERE id = %s", (hub_id,))
        return _hub(row) if row else None

    async def drop(self, hub_id: str) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute("DELETE FROM hubs WHERE id = %s", (hub_id,))
            if not cur.rowcount:
                return False
            await notify(conn, "hubs", hub_id)
            return True

    async def expire(self, now: float, limit: int) -> int:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "DELETE FROM hubs WHERE id IN (SELECT id FROM hubs WHERE expires <= %s"
                " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id",
                (now, limit),
            )
            gone = await cur.fetchall()
            for row in gone:
                await notify(conn, "hubs", row["id"])
            return len(gone)


#: Take or renew in one statement: the conflict's update applies only when the lease is
#: the caller's or lapsed; RETURNING gives a row exactly when the caller holds it now.
_ACQUIRE = (
    "INSERT INTO leases AS l (name, holder, expires, acquired)"
    " VALUES (%(name)s, %(holder)s, %(expires)s, %(now)s)"
    " ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, expires = EXCLUDED.expires,"
    " acquired = CASE WHEN l.holder = EXCLUDED.holder THEN l.acquired"
    " ELSE EXCLUDED.acquired END"
    " WHERE l.holder = EXCLUDED.holder OR l.expires <= %(now)s"
    " RETURNING acquired"
)


class PgLeases:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def acquire(self, name: str, holder: str, expires: float, now: float) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                _ACQUIRE, {"name": name, "holder": holder, "expires": expires, "now": now}
            )
            row = await cur.fetchone()
            if row is None:
                return False
            if row["acquired"] == now:  # taken now (fresh or from a lapsed holder)
                await notify(conn, "leases", name)
            return True

    async def release(self, name: str, holder: str) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "DELETE FROM leases WHERE name = %s AND holder = %s", (name, holder)
            )
            if not cur.rowcount:
                return False
            await notify(conn, "leases", name)
            return True

    async def get(self, name: str) -> Lease | None:
        row = await self._db.one("SELECT * FROM leases WHERE name = %s", (name,))
        return _lease(row) if row else None

    async def all(self) -> list[Lease]:
        return [_lease(r) for r in await self._db.all("SELECT * FROM leases ORDER BY name")]
