"""Cluster-wide state: the CA keys, the rotation (compare-and-set on a revision), settings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from hub.storage.api import CAKindName, CASlot, Conflict, RotationRecord, StoredCA
from hub.storage.postgres.db import Conn, Db, notify


def _ca(row: DictRow) -> StoredCA:
    return StoredCA(
        kind=row["kind"],
        slot=row["slot"],
        private_key=bytes(row["private_key"]),
        ssh_public=row["ssh_public"],
        x509_pem=bytes(row["x509_pem"]),
    )


async def _put_cas(conn: Conn, cas: Sequence[StoredCA]) -> None:
    for ca in cas:
        await conn.execute(
            "INSERT INTO authorities (kind, slot, private_key, ssh_public, x509_pem)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (kind, slot) DO UPDATE SET"
            " private_key = excluded.private_key, ssh_public = excluded.ssh_public,"
            " x509_pem = excluded.x509_pem",
            (ca.kind, ca.slot, ca.private_key, ca.ssh_public, ca.x509_pem),
        )


class PgAuthorities:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def all(self) -> list[StoredCA]:
        rows = await self._db.all("SELECT * FROM authorities ORDER BY kind, slot")
        return [_ca(r) for r in rows]

    async def create(self, cas: Sequence[StoredCA]) -> bool:
        async with self._db.tx() as conn:
            # every hub that finds no CA gets here: the lock makes one of them first
            await conn.execute("LOCK TABLE authorities IN EXCLUSIVE MODE")
            cur = await conn.execute("SELECT 1 AS one FROM authorities LIMIT 1")
            if await cur.fetchone() is not None:
                return False
            await _put_cas(conn, cas)
            await notify(conn, "rotation")
            return True

    async def replace_keys(self, cas: Sequence[StoredCA]) -> None:
        async with self._db.tx() as conn:
            for ca in cas:
                cur = await conn.execute(
                    "UPDATE authorities SET private_key = %s WHERE kind = %s AND slot = %s",
                    (ca.private_key, ca.kind, ca.slot),
                )
                if cur.rowcount != 1:
                    raise Conflict(f"no stored {ca.kind}/{ca.slot} CA to re-key")


class PgRotation:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def get(self) -> RotationRecord:
        row = await self._db.one("SELECT states, revision FROM rotation")
        if row is None:
            return RotationRecord({}, 0)
        return RotationRecord(row["states"], int(row["revision"]))

    async def advance(
        self,
        expect_revision: int,
        states: Mapping[str, Mapping[str, object]],
        put: Sequence[StoredCA] = (),
        remove: Sequence[tuple[CAKindName, CASlot]] = (),
    ) -> RotationRecord:
        value = Jsonb({k: dict(v) for k, v in states.items()})
        async with self._db.tx() as conn:
            if expect_revision == 0:
                cur = await conn.execute(
                    "INSERT INTO rotation (states, revision) VALUES (%s, 1)"
                    " ON CONFLICT DO NOTHING RETURNING revision",
                    (value,),
                )
            else:
                cur = await conn.execute(
                    "UPDATE rotation SET states = %s, revision = revision + 1"
                    " WHERE revision = %s RETURNING revision",
                    (value, expect_revision),
                )
            row = await cur.fetchone()
            if row is None:
                raise Conflict(
                    f"the rotation moved on since revision {expect_revision}: re-read it"
                )
            for kind, slot in remove:
                await conn.execute(
                    "DELETE FROM authorities WHERE kind = %s AND slot = %s", (kind, slot)
                )
            await _put_cas(conn, put)
            await notify(conn, "rotation", str(row["revision"]))
        return RotationRecord({k: dict(v) for k, v in states.items()}, int(row["revision"]))

    async def acks(self) -> dict[str, str]:
        rows = await self._db.all("SELECT node_id, revision FROM rotation_acks")
        return {r["node_id"]: r["revision"] for r in rows}

    async def ack(self, node_id: str, revision: str) -> None:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO rotation_acks (node_id, revision) VALUES (%s, %s)"
                " ON CONFLICT (node_id) DO UPDATE SET revision = excluded.revision",
                (node_id, revision),
            )

    async def forget_acks(self) -> None:
        async with self._db.tx() as conn:
            await conn.execute("DELETE FROM rotation_acks")


class PgSettings:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def get(self, key: str) -> str | None:
        row = await self._db.one("SELECT value FROM settings WHERE key = %s", (key,))
        return str(row["value"]) if row else None

    async def put(self, key: str, value: str) -> None:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO settings (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    async def put_if_absent(self, key: str, value: str) -> str:
        async with self._db.tx() as conn:
            # DO UPDATE with the old value: RETURNING then gives the stored row either way
            cur = await conn.execute(
                "INSERT INTO settings AS s (key, value) VALUES (%s, %s)"
                " ON CONFLICT (key) DO UPDATE SET value = s.value RETURNING value",
                (key, value),
            )
            row = await cur.fetchone()
            return str(row["value"]) if row else value
