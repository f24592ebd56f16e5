"""SQLiteBackend against a real database file: schema, CRUD, single-use tokens, TOTP steps."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from hub.backend import Beat, Node, SQLiteBackend, Token, User
from remoteler.access import ACCESS_ROLE, Role


def _user(name: str = "alice", **kw: object) -> User:
    fields: dict[str, object] = {
        "name": name,
        "roles": ("access",),
        "logins": ("pi", "root"),
        "password_hash": "$argon2id$fake",
        "totp_secret": "JBSWY3DPEHPK3PXP",
        "totp_last_step": 0,
        "created": 1000.0,
    }
    fields.update(kw)
    return User(**fields)  # type: ignore[arg-type]


def _token(token_hash: str = "ab" * 32, expires: float | None = None) -> Token:
    now = time.time()
    return Token(token_hash, "node", {"env": "lab"}, now, expires or now + 600, None)


async def test_schema_and_preset_access_role(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    db = await SQLiteBackend.open(path)
    try:
        assert await db.list_roles() == [ACCESS_ROLE]
        assert await db.get_role("access") == ACCESS_ROLE
    finally:
        await db.close()
    with sqlite3.connect(path) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert tables >= {"users", "roles", "tokens", "invites", "nodes"}


async def test_reopen_keeps_data_and_does_not_reset_roles(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    db = await SQLiteBackend.open(path)
    await db.put_role(Role("access", logins=("pi",)))  # an operator edited the preset
    await db.put_user(_user())
    await db.close()
    db = await SQLiteBackend.open(path)
    try:
        assert await db.get_user("alice") == _user()
        role = await db.get_role("access")
        assert role is not None and role.logins == ("pi",)
        assert len(await db.list_roles()) == 1
    finally:
        await db.close()


async def test_db_file_is_0600(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    db = await SQLiteBackend.open(path)
    try:
        await db.put_user(_user())
        for p in [path, *tmp_path.glob("hub.db-*")]:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        await db.close()


async def test_users_crud(backend: SQLiteBackend) -> None:
    assert await backend.get_user("alice") is None
    await backend.put_user(_user())
    await backend.put_user(_user("bob", password_hash=None, totp_secret=None))
    assert await backend.get_user("alice") == _user()
    assert [u.name for u in await backend.list_users()] == ["alice", "bob"]
    await backend.put_user(_user(logins=("pi",)))  # replace
    alice = await backend.get_user("alice")
    assert alice is not None and alice.logins == ("pi",)
    assert await backend.delete_user("alice") is True
    assert await backend.delete_user("alice") is False
    assert [u.name for u in await backend.list_users()] == ["bob"]


async def test_roles_crud(backend: SQLiteBackend) -> None:
    role = Role("lab", logins=("pi", "{{internal.logins}}"), node_labels={"env": ("lab", "s-*")})
    await backend.put_role(role)
    assert await backend.get_role("lab") == role
    await backend.put_role(Role("lab", max_session_ttl=60))
    got = await backend.get_role("lab")
    assert got is not None and got.max_session_ttl == 60 and got.logins == ()
    assert [r.name for r in await backend.list_roles()] == ["access", "lab"]
    assert await backend.delete_role("lab") is True
    assert await backend.delete_role("lab") is False
    assert await backend.get_role("lab") is None


async def test_tokens_crud_and_delete_by_prefix(backend: SQLiteBackend) -> None:
    a, b = _token("aa" * 32), _token("ab" * 32)
    await backend.add_token(a)
    await backend.add_token(b)
    assert await backend.get_token(a.token_hash) == a
    assert a.token_id == a.token_hash[:12]
    assert {t.token_hash for t in await backend.list_tokens()} == {a.token_hash, b.token_hash}
    with pytest.raises(sqlite3.IntegrityError):
        await backend.add_token(a)
    assert await backend.delete_token("aaaa") == 0, "too short a prefix deletes nothing"
    assert await backend.delete_token(a.token_id) == 1
    assert await backend.get_token(a.token_hash) is None
    assert await backend.get_token(b.token_hash) == b


async def test_consume_token_is_single_use_under_concurrency(backend: SQLiteBackend) -> None:
    tok = _token()
    await backend.add_token(tok)
    now = time.time()
    results = await asyncio.gather(
        *(backend.consume_token(tok.token_hash, f"node-{i}", now) for i in range(8))
    )
    assert sorted(results) == [False] * 7 + [True]
    stored = await backend.get_token(tok.token_hash)
    assert stored is not None and stored.used_by == f"node-{results.index(True)}"
    assert await backend.consume_token(tok.token_hash, "late", now) is False


async def test_consume_token_single_use_across_two_connections(tmp_path: Path) -> None:
    """The hub and tctl each hold a connection to the same file."""
    path = tmp_path / "hub.db"
    one, two = await SQLiteBackend.open(path), await SQLiteBackend.open(path)
    try:
        tok = _token()
        await one.add_token(tok)
        now = time.time()
        results = await asyncio.gather(
            *(db.consume_token(tok.token_hash, f"n{i}", now) for i, db in enumerate([one, two] * 3))
        )
        assert sorted(results) == [False] * 5 + [True]
    finally:
        await one.close()
        await two.close()


async def test_expired_or_unknown_token_not_consumable(backend: SQLiteBackend) -> None:
    now = time.time()
    tok = _token(expires=now - 1)
    await backend.add_token(tok)
    assert await backend.consume_token(tok.token_hash, "n", now) is False
    assert await backend.consume_token("00" * 32, "n", now) is False
    edge = _token("cd" * 32, expires=now)
    await backend.add_token(edge)
    assert await backend.consume_token(edge.token_hash, "n", now) is False, "expiry is exclusive"
    stored = await backend.get_token(tok.token_hash)
    assert stored is not None and stored.used_by is None


async def test_record_totp_step_only_accepts_newer_steps(backend: SQLiteBackend) -> None:
    await backend.put_user(_user())
    assert await backend.record_totp_step("alice", 100) is True
    assert await backend.record_totp_step("alice", 100) is False
    assert await backend.record_totp_step("alice", 99) is False
    assert await backend.record_totp_step("alice", 101) is True
    assert await backend.record_totp_step("nobody", 500) is False
    alice = await backend.get_user("alice")
    assert alice is not None and alice.totp_last_step == 101


async def test_record_totp_step_concurrent_same_step(backend: SQLiteBackend) -> None:
    await backend.put_user(_user())
    results = await asyncio.gather(*(backend.record_totp_step("alice", 7) for _ in range(6)))
    assert results.count(True) == 1


async def test_invites_single_use_and_expiry(backend: SQLiteBackend) -> None:
    now = time.time()
    await backend.add_invite("h1", "alice", now + 60)
    await backend.add_invite("h2", "bob", now - 1)
    assert await backend.check_invite("h1", "alice", now) is True
    assert await backend.check_invite("h1", "bob", now) is False, "bound to its user"
    assert await backend.check_invite("h2", "bob", now) is False
    assert await backend.consume_invite("h2", "bob", now) is False
    assert await backend.consume_invite("h1", "alice", now) is True
    assert await backend.consume_invite("h1", "alice", now) is False
    assert await backend.check_invite("h1", "alice", now) is False


async def test_nodes_crud_online_and_heartbeats(backend: SQLiteBackend) -> None:
    a = Node(id="id-a", name="truck-1", labels={"env": "prod"}, joined=1.0)
    b = Node(id="id-b", name="truck-2", joined=2.0)
    await backend.add_node(a)
    await backend.add_node(b)
    assert await backend.get_node("id-a") == a
    assert await backend.get_node("truck-1") == a, "found by name too"
    assert await backend.get_node("nope") is None
    with pytest.raises(sqlite3.IntegrityError):
        await backend.add_node(Node(id="id-c", name="truck-1"))
    with pytest.raises(sqlite3.IntegrityError):
        await backend.add_node(Node(id="id-a", name="other"))

    await backend.set_nodes_online([("id-a", True, 50.0)])
    got = await backend.get_node("id-a")
    assert got is not None and got.online and got.last_seen == 50.0

    await backend.update_heartbeats(
        [Beat("id-a", 60.0, {"env": "dev"}, "1.2", 7, 50.0), Beat("ghost", 1.0, {})]
    )
    got = await backend.get_node("truck-1")
    assert got is not None
    assert (got.last_seen, dict(got.labels), got.version) == (60.0, {"env": "dev"}, "1.2")
    assert (got.audit_pending, got.audit_oldest) == (7, 50.0)

    await backend.set_nodes_online([("id-b", True, 70.0)])
    await backend.mark_all_offline()
    assert not any(n.online for n in await backend.list_nodes())
    assert [n.name for n in await backend.list_nodes()] == ["truck-1", "truck-2"]

    assert await backend.delete_node("truck-1") is True
    assert await backend.delete_node("id-b") is True
    assert await backend.delete_node("id-b") is False
    assert await backend.list_nodes() == []
