"""What only the PostgreSQL engine does: several hubs on one database (NOTIFY, atomic
operations across instances), the LISTEN reconnect, migrations, URLs and passwords."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pgkit import PASSWORD, PgServer

from hub.storage.api import (
    TOPICS,
    Change,
    Conflict,
    GuardPolicy,
    Storage,
    StorageError,
    Token,
    TooNew,
    Unavailable,
    User,
    blob_name,
)
from hub.storage.postgres import PostgresStorage, open_postgres
from hub.storage.postgres.firmware import CHUNK
from hub.storage.postgres.listen import HEARTBEAT, PING_TIMEOUT
from hub.storage.postgres.migrate import migrations, newest
from remoteler.locks import Lock

#: A generous bound for a change to travel from one hub to another (measured: ~10 ms).
FEED_BOUND = 1.0


@pytest.fixture
async def two(pg_server: PgServer) -> AsyncIterator[tuple[PostgresStorage, PostgresStorage]]:
    """Two storages (two hubs) on one new database, opened at once."""
    url = pg_server.new_database()
    a, b = await asyncio.gather(open_postgres(url), open_postgres(url))
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def _next(changes: AsyncIterator[Change], bound: float = FEED_BOUND) -> Change:
    return await asyncio.wait_for(anext(changes), bound)


async def test_a_lock_added_on_one_hub_reaches_the_other_within_a_second(
    two: tuple[PostgresStorage, PostgresStorage],
) -> None:
    a, b = two
    seen = b.changes()
    began = time.monotonic()
    await a.locks.add(Lock(id="0123456789ab", kind="user", target="mallory", created=1.0))
    assert await _next(seen) == Change("locks", "0123456789ab")
    took = time.monotonic() - began
    assert took < FEED_BOUND
    assert [lock.target for lock in await b.locks.all(now=2.0)] == ["mallory"]
    # a write that rolls back announces nothing
    with pytest.raises(Conflict):
        await a.locks.add(Lock(id="0123456789ab", kind="user", target="eve", created=1.0))
    await b.locks.delete("0123456789ab")
    assert await _next(seen) == Change("locks", "0123456789ab")


async def test_a_killed_listen_connection_is_a_gap_then_changes_flow_again(
    two: tuple[PostgresStorage, PostgresStorage], pg_server: PgServer
) -> None:
    a, b = two
    seen = b.changes()
    pid = await b.listener.backend_pid()
    pg_server.psql(f"SELECT pg_terminate_backend({pid})")
    gap = [await _next(seen, 10) for _ in TOPICS]  # reconnect backoff: well under 10 s
    assert sorted(c.topic for c in gap) == sorted(TOPICS) and {c.key for c in gap} == {"*"}
    assert b.listener.gaps == 1 and await b.listener.backend_pid() != pid
    await a.roles.delete("access")
    assert await _next(seen) == Change("roles", "access")


async def test_atomic_operations_hold_across_two_hubs(
    two: tuple[PostgresStorage, PostgresStorage],
) -> None:
    a, b = two
    token = Token("ab" * 32, "node", {}, 1.0, 100.0, None)
    await a.tokens.add(token)
    won = await asyncio.gather(
        *[(a if i % 2 else b).tokens.consume(token.token_hash, f"n{i}", 5.0) for i in range(20)]
    )
    assert won.count(True) == 1
    policy = GuardPolicy(window=60, threshold=100, lockout=300)
    await asyncio.gather(
        *[(a if i % 2 else b).login_guards.fail("bob", 10.0, policy) for i in range(20)]
    )
    row = await a.login_guards.get("bob")
    assert row is not None and row.failures == 20
    first = await a.rotation.advance(0, {"user": {"phase": "standby"}})
    results = await asyncio.gather(
        a.rotation.advance(first.revision, {"user": {"phase": "init"}}),
        b.rotation.advance(first.revision, {"user": {"phase": "init"}}),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "RotationRecord"]
    assert (await b.rotation.get()).revision == first.revision + 1


async def test_blobs_are_stored_in_1_mib_chunks_and_a_bad_one_leaves_nothing(
    two: tuple[PostgresStorage, PostgresStorage], pg_server: PgServer
) -> None:
    a, b = two
    data = bytes(range(256)) * (CHUNK * 2 // 256) + b"tail"

    async def pieces(blob: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
        for i in range(0, len(blob), size):
            yield blob[i : i + size]

    name = blob_name(data)
    assert await a.blobs.put(name, pieces(data), max_size=len(data)) == len(data)
    database = a.db.where.rsplit("/", 1)[1]
    chunks = pg_server.psql("SELECT count(*), max(length(data)) FROM blob_chunks", database)
    assert chunks.strip() == f"3|{CHUNK}"
    assert await b.blobs.read(name, CHUNK - 2, 6) == data[CHUNK - 2 : CHUNK + 4]
    assert await b.blobs.read(name, len(data) - 2, 100) == b"il"
    with pytest.raises(Conflict):  # does not hash to its name
        await a.blobs.put("00" * 32, pieces(data), max_size=len(data))
    with pytest.raises(Conflict):  # too large
        await a.blobs.put(hashlib.sha256(data).hexdigest(), pieces(data), max_size=10)
    assert await b.blobs.names() == [name]
    assert pg_server.psql("SELECT count(*) FROM blob_chunks", database).strip() == "3"


async def test_a_newer_database_is_refused(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    storage = await open_postgres(url)
    await storage.check()
    await storage.close()
    pg_server.psql(
        f"INSERT INTO schema_version VALUES ({newest() + 1}, now())", url.rsplit("/", 1)[1]
    )
    with pytest.raises(TooNew, match=f"schema version {newest() + 1}, newer than"):
        await open_postgres(url)


async def test_users_from_before_the_sso_migration_read_back_as_local_users(
    pg_server: PgServer,
) -> None:
    """A database at schema 4 with a user: opening migrates it (0005_sso.sql) and the
    user reads back with no connector, no traits and no expiry."""
    url = pg_server.new_database()
    database = url.rsplit("/", 1)[1]
    before = [m for m in migrations() if m.version < 5]
    assert [m.version for m in before] == [1, 2, 3, 4] and newest() >= 5
    for m in before:
        pg_server.psql(m.sql, database)
        pg_server.psql(f"INSERT INTO schema_version VALUES ({m.version}, now())", database)
    pg_server.psql(
        "INSERT INTO users (name, roles, logins, password_hash, totp_secret, totp_last_step,"
        """ created) VALUES ('carol', '["access"]', '["pi"]', NULL, 'SEED', 3, 1.5)""",
        database,
    )
    storage = await open_postgres(url)
    try:
        assert await storage.users.get("carol") == User(
            "carol", ("access",), ("pi",), None, "SEED", 3, 1.5
        )
        carol = await storage.users.get("carol")
        assert carol is not None and (carol.connector, carol.traits, carol.expires) == (
            None,
            {},
            None,
        )
    finally:
        await storage.close()


async def test_the_password_comes_from_a_file_never_from_the_url(
    pg_server: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg_server.new_database(password=True)
    with pytest.raises(Unavailable) as refused:
        await open_postgres(url)
    assert "\n" not in str(refused.value) and "is unavailable" in str(refused.value)
    secret = tmp_path / "pg.password"
    secret.write_text(PASSWORD + "\n")
    opened: Storage = await open_postgres(url, password_file=secret)
    await opened.close()
    # libpq's own password file
    host_port = url.split("@", 1)[1].split("/", 1)[0]  # 127.0.0.1:PORT
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"{host_port}:*:*:{PASSWORD}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    opened = await open_postgres(url)
    await opened.close()
    monkeypatch.delenv("PGPASSFILE")
    secret.write_text("wrong-password\n")
    with pytest.raises(Unavailable) as wrong:
        await open_postgres(url, password_file=secret)
    assert "password authentication failed" in str(wrong.value)
    assert "wrong-password" not in str(wrong.value) and "\n" not in str(wrong.value)
    with_password = url.replace("@", f":{PASSWORD}@", 1)
    with pytest.raises(StorageError, match="--storage-password-file") as in_url:
        await open_postgres(with_password)
    assert PASSWORD not in str(in_url.value)


async def test_a_server_that_is_down_is_one_line(pg_server: PgServer) -> None:
    from helpers import free_port

    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    began = time.monotonic()
    with pytest.raises(Unavailable) as down:
        await open_postgres(url)
    assert "\n" not in str(down.value) and "Connection refused" in str(down.value)
    assert time.monotonic() - began < 10


async def test_pool_size_is_the_engines_and_bad_values_are_one_line(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    storage = await open_postgres(url + "?pool_size=2")
    try:
        assert storage.db.pool.max_size == 2
        # more concurrent calls than connections: they wait their turn
        counts = await asyncio.gather(*[storage.audit.count() for _ in range(10)])
        assert counts == [0] * 10
    finally:
        await storage.close()
    with pytest.raises(StorageError, match="pool_size must be a number from 1 to 100"):
        await open_postgres(url + "?pool_size=0")


async def test_connections_the_server_dropped_are_replaced_not_used(
    two: tuple[PostgresStorage, PostgresStorage], pg_server: PgServer
) -> None:
    """A restart or failover of PostgreSQL: the next calls reconnect instead of failing."""
    a, _b = two
    await asyncio.gather(*[a.audit.count() for _ in range(4)])  # a few pooled connections
    database = a.db.where.rsplit("/", 1)[1]
    killed = pg_server.psql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        f" WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )
    assert int(killed) >= 3  # both pools and both LISTEN connections
    assert await asyncio.gather(*[a.audit.count() for _ in range(4)]) == [0] * 4
    await a.settings.put("k", "v")
    assert await a.settings.get("k") == "v"


async def test_a_silent_dead_listen_link_is_found_by_its_ping(pg_server: PgServer) -> None:
    """A link that drops every byte but stays open (a NAT that forgot the mapping): the
    listener's ping times out, it reconnects, and subscribers re-read (a gap)."""
    from faultproxy import FaultProxy

    url = pg_server.new_database()
    a = await open_postgres(url)
    async with FaultProxy("127.0.0.1", pg_server.port) as proxy:
        b = await open_postgres(url.replace(f":{pg_server.port}/", f":{proxy.addr.split(':')[1]}/"))
        try:
            b.listener.heartbeat, b.listener.ping_timeout = 0.2, 0.3
            seen = b.changes()
            proxy.blackhole()
            began = time.monotonic()
            while b.listener.listening.is_set():
                assert time.monotonic() - began < 60, "the dead link went unnoticed"
                await asyncio.sleep(0.05)
            # The new link keeps the usual timings: a 0.3 s ping on a loaded machine
            # would find that link dead too, and count a second gap.
            b.listener.heartbeat, b.listener.ping_timeout = HEARTBEAT, PING_TIMEOUT
            proxy.clear()  # new connections get through again
            # A reconnect begun while the link was dark waits out its 10 s connect
            # timeout first (CONNECT_TIMEOUT), so the gap comes 10 s or more from now.
            gap = [await _next(seen, 40) for _ in TOPICS]
            assert {c.key for c in gap} == {"*"} and b.listener.gaps == 1
            await a.locks.add(Lock(id="fedcba987654", kind="node", target="n1", created=1.0))
            assert await _next(seen, 10) == Change("locks", "fedcba987654")
        finally:
            await b.close()
            await a.close()
