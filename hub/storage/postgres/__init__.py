"""The shared engine: one PostgreSQL database (psycopg 3, a connection pool), several hubs.

``open_postgres`` checks the URL (no password in it), connects, applies the
schema migrations under an advisory lock, adds the preset roles, opens the pool
and the LISTEN connection of the change feed. docs/storage.md.
"""

from __future__ import annotations

from pathlib import Path

from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from hub.storage.api import Storage
from hub.storage.feed import ChangeFeed
from hub.storage.postgres import migrate
from hub.storage.postgres.connect import (
    CONNECT_TIMEOUT,
    POOL_WAIT,
    POOL_WAITING,
    STATEMENT_TIMEOUT,
    Target,
    parse_target,
)
from hub.storage.postgres.db import Db
from hub.storage.postgres.engine import PostgresStorage
from hub.storage.postgres.errors import translate
from hub.storage.postgres.listen import Listener
from remoteler.access import PRESET_ROLES

__all__ = ["PostgresStorage", "open_postgres"]


async def _configure(conn: AsyncConnection[DictRow]) -> None:
    """Every pool connection: no statement runs longer than :data:`STATEMENT_TIMEOUT`."""
    await conn.execute(f"SET statement_timeout = {int(STATEMENT_TIMEOUT * 1000)}")
    await conn.commit()


async def _connect(target: Target) -> AsyncConnection[object]:
    try:
        return await AsyncConnection.connect(target.url, autocommit=True, **target.kwargs())  # type: ignore[arg-type]
    except Exception as exc:
        raise translate(exc, target.where) from None


async def open_postgres(url: str, *, password_file: Path | None = None) -> PostgresStorage:
    """Open (and migrate) the database at ``url``; :class:`~hub.storage.api.StorageError`
    with one line (never the password) when it cannot."""
    target = parse_target(url, password_file)
    conn = await _connect(target)
    try:
        try:
            await migrate.migrate(conn, target.where)
            async with conn.transaction():
                for role in PRESET_ROLES:
                    await conn.execute(
                        "INSERT INTO roles (name, spec) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                        (role.name, Jsonb(role.to_dict())),
                    )
        except Exception as exc:
            raise translate(exc, target.where) from None
    finally:
        await conn.close()
    pool: AsyncConnectionPool[AsyncConnection[DictRow]] = AsyncConnectionPool(
        target.url,
        connection_class=AsyncConnection[DictRow],
        kwargs={**target.kwargs(), "row_factory": dict_row},
        min_size=1,
        max_size=target.pool_size,
        open=False,
        name="remoteler-storage",
        # a connection the server dropped (a restart, a failover) is replaced, not handed out
        check=AsyncConnectionPool.check_connection,
        configure=_configure,
        timeout=POOL_WAIT,
        max_waiting=POOL_WAITING,
    )
    try:
        await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
    except Exception as exc:
        await pool.close()
        raise translate(exc, target.where) from None
    feed = ChangeFeed()
    listener = Listener(lambda: _connect(target), feed, target.where)
    try:
        await listener.start()
    except BaseException:
        await pool.close()
        raise
    return PostgresStorage(Db(pool, target.where), feed, listener)


def _typecheck(storage: PostgresStorage) -> Storage:
    return storage  # mypy: PostgresStorage implements the whole interface
