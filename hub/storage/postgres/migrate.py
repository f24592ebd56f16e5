"""Numbered schema files applied at open, under an advisory lock, tracked in ``schema_version``.

``schema/NNNN_what.sql``: migration N brings the database from version N-1 to N
in one transaction with the version bump. Two hubs starting at once on an empty
database: the second waits on the advisory lock, then finds the work done. A
database above the newest migration here was written by a newer hub:
:class:`~hub.storage.api.TooNew`, nothing touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from psycopg import AsyncConnection

from hub.storage.api import StorageError, TooNew

_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
#: pg_advisory_xact_lock key of the migrations (any constant; "rmtl" in ASCII)
LOCK_KEY = 0x726D746C


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    found: list[Migration] = []
    for entry in (resources.files("hub.storage.postgres") / "schema").iterdir():
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"hub/storage/postgres/schema: migration {expected} is missing")
    return found


def newest() -> int:
    steps = migrations()
    return steps[-1].version if steps else 0


async def schema_version(conn: AsyncConnection[object]) -> int:
    cur = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not _first(row):
        return 0
    cur = await conn.execute("SELECT max(version) FROM schema_version")
    row = await cur.fetchone()
    value = _first(row) if row else None
    return int(value) if isinstance(value, int) else 0


def too_new(have: int, where: str) -> TooNew:
    return TooNew(
        f"PostgreSQL at {where} is at schema version {have}, newer than this hub's "
        f"{newest()}: run the newer hub (a database is never downgraded)"
    )


async def migrate(conn: AsyncConnection[object], where: str) -> list[str]:
    """Bring the database to the newest schema; the names of the migrations applied.

    ``conn`` is a connection of its own (not in a transaction); each step is one
    transaction holding the advisory lock, so concurrent hubs apply each step once.
    """
    steps = migrations()
    applied: list[str] = []
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            have = await schema_version(conn)
            if have > len(steps):
                raise too_new(have, where)
            if have == len(steps):
                return applied
            step = steps[have]
            try:
                async with conn.transaction():  # a savepoint: the error names the file
                    await conn.execute(step.sql.encode())
                    await conn.execute(
                        "INSERT INTO schema_version (version, applied) VALUES (%s, now())",
                        (step.version,),
                    )
            except StorageError:
                raise
            except Exception as exc:
                line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise StorageError(f"{where}: migration {step.name} failed: {line}") from None
            applied.append(step.name)


def _first(row: object) -> object:
    if isinstance(row, dict):
        return next(iter(row.values()))
    if isinstance(row, tuple | list):
        return row[0]
    return None
