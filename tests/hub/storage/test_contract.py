"""The storage contract: the same cases against every engine (``storage`` fixture).

Each case uses only :mod:`hub.storage.api`; an engine passes when it behaves
exactly as the interface's docstrings say, atomic operations included.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from hub.storage.api import (
    AuditQuery,
    Beat,
    CAKindName,
    CASlot,
    Change,
    Conflict,
    GuardPolicy,
    HubRecord,
    Inserted,
    Lease,
    Node,
    NotFound,
    Presence,
    ReusedSeq,
    Rollout,
    RotationRecord,
    Storage,
    StoredCA,
    StoredConnector,
    Token,
    TrustedKey,
    User,
    blob_name,
)
from remoteler.access import ACCESS_ROLE, PRESET_ROLES, Role
from remoteler.audit.events import AuditEvent
from remoteler.locks import Lock

# == users, roles, tokens, invites, login guards, nodes, presence, locks, change feed ==


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


async def test_preset_access_role(storage: Storage) -> None:
    assert await storage.roles.all() == sorted(PRESET_ROLES, key=lambda r: r.name)
    assert await storage.roles.get("access") == ACCESS_ROLE


async def test_users_crud(storage: Storage) -> None:
    assert await storage.users.get("alice") is None
    await storage.users.put(_user())
    await storage.users.put(_user("bob", password_hash=None, totp_secret=None))
    assert await storage.users.get("alice") == _user()
    assert [u.name for u in await storage.users.all()] == ["alice", "bob"]
    await storage.users.put(_user(logins=("pi",)))  # replace
    alice = await storage.users.get("alice")
    assert alice is not None and alice.logins == ("pi",)
    assert await storage.users.delete("alice") is True
    assert await storage.users.delete("alice") is False
    assert [u.name for u in await storage.users.all()] == ["bob"]


async def test_roles_crud(storage: Storage) -> None:
    role = Role("lab", logins=("pi", "{{internal.logins}}"), node_labels={"env": ("lab", "s-*")})
    await storage.roles.put(role)
    assert await storage.roles.get("lab") == role
    await storage.roles.put(Role("lab", max_session_ttl=60))
    got = await storage.roles.get("lab")
    assert got is not None and got.max_session_ttl == 60 and got.logins == ()
    assert [r.name for r in await storage.roles.all()] == ["access", "editor", "lab"]
    assert await storage.roles.delete("lab") is True
    assert await storage.roles.delete("lab") is False
    assert await storage.roles.get("lab") is None


async def test_tokens_crud_and_delete_by_id(storage: Storage) -> None:
    a, b = _token("aa" * 32), _token("ab" * 32)
    await storage.tokens.add(a)
    await storage.tokens.add(b)
    assert await storage.tokens.get(a.token_hash) == a
    assert {t.token_hash for t in await storage.tokens.all()} == {a.token_hash, b.token_hash}
    with pytest.raises(Conflict):
        await storage.tokens.add(a)
    assert await storage.tokens.delete("aaaa") == 0, "too short a prefix deletes nothing"
    assert await storage.tokens.delete(a.token_id) == 1
    assert await storage.tokens.get(a.token_hash) is None
    assert await storage.tokens.get(b.token_hash) == b


async def test_token_consume_is_single_use_under_concurrency(storage: Storage) -> None:
    tok = _token()
    await storage.tokens.add(tok)
    now = time.time()
    results = await asyncio.gather(
        *(storage.tokens.consume(tok.token_hash, f"node-{i}", now) for i in range(20))
    )
    assert sorted(results) == [False] * 19 + [True]
    stored = await storage.tokens.get(tok.token_hash)
    assert stored is not None and stored.used_by == f"node-{results.index(True)}"
    assert await storage.tokens.consume(tok.token_hash, "late", now) is False


async def test_expired_or_unknown_token_not_consumable(storage: Storage) -> None:
    now = time.time()
    tok = _token(expires=now - 1)
    await storage.tokens.add(tok)
    assert await storage.tokens.consume(tok.token_hash, "n", now) is False
    assert await storage.tokens.consume("00" * 32, "n", now) is False
    edge = _token("cd" * 32, expires=now)
    await storage.tokens.add(edge)
    assert await storage.tokens.consume(edge.token_hash, "n", now) is False, "expiry exclusive"
    stored = await storage.tokens.get(tok.token_hash)
    assert stored is not None and stored.used_by is None


async def test_record_totp_step_only_newer_and_once(storage: Storage) -> None:
    await storage.users.put(_user())
    assert await storage.users.record_totp_step("alice", 100) is True
    assert await storage.users.record_totp_step("alice", 100) is False
    assert await storage.users.record_totp_step("alice", 99) is False
    assert await storage.users.record_totp_step("nobody", 500) is False
    results = await asyncio.gather(
        *(storage.users.record_totp_step("alice", 101) for _ in range(20))
    )
    assert results.count(True) == 1
    alice = await storage.users.get("alice")
    assert alice is not None and alice.totp_last_step == 101


async def test_invites_single_use_and_expiry(storage: Storage) -> None:
    now = time.time()
    await storage.invites.add("h1", "alice", now + 60)
    await storage.invites.add("h2", "bob", now - 1)
    assert await storage.invites.check("h1", "alice", now) is True
    assert await storage.invites.check("h1", "bob", now) is False, "bound to its user"
    assert await storage.invites.check("h2", "bob", now) is False
    assert await storage.invites.consume("h2", "bob", now) is False
    results = await asyncio.gather(
        *(storage.invites.consume("h1", "alice", now) for _ in range(20))
    )
    assert results.count(True) == 1
    assert await storage.invites.check("h1", "alice", now) is False


POLICY = GuardPolicy(window=300.0, threshold=5, lockout=900.0)


async def test_login_guard_fail_counts_exactly_under_concurrency(storage: Storage) -> None:
    """20 failures at once: the count is exact, and the 5th, 10th, ... each lock."""
    now = 1000.0
    policy = GuardPolicy(window=300.0, threshold=100, lockout=900.0)
    rows = await asyncio.gather(
        *(storage.login_guards.fail("mallory", now, policy) for _ in range(20))
    )
    assert sorted(r.failures for r in rows) == list(range(1, 21))
    row = await storage.login_guards.get("mallory")
    assert row is not None and (row.failures, row.first_failure, row.locked_until) == (
        20,
        now,
        None,
    )


async def test_login_guard_locks_at_threshold_and_window_restarts(storage: Storage) -> None:
    g = storage.login_guards
    for i in range(1, 5):
        row = await g.fail("bob", 1000.0 + i, POLICY)
        assert (row.failures, row.first_failure, row.locked_until) == (i, 1001.0, None)
    row = await g.fail("bob", 1010.0, POLICY)  # the 5th within the window: locked
    assert (row.failures, row.first_failure, row.locked_until) == (0, 1010.0, 1910.0)
    row = await g.fail("bob", 1020.0, POLICY)  # counting again; the lockout stays
    assert (row.failures, row.first_failure, row.locked_until) == (1, 1010.0, 1910.0)
    row = await g.fail("bob", 5000.0, POLICY)  # past the window: a new count, no lockout
    assert (row.failures, row.first_failure, row.locked_until) == (1, 5000.0, None)
    one = GuardPolicy(window=300.0, threshold=1, lockout=60.0)
    row = await g.fail("eve", 7.0, one)
    assert (row.failures, row.locked_until) == (0, 67.0)


async def test_login_guard_concurrent_lockout_once_per_threshold(storage: Storage) -> None:
    rows = await asyncio.gather(
        *(storage.login_guards.fail("carol", 50.0, POLICY) for _ in range(20))
    )
    assert sum(1 for r in rows if r.failures == 0) == 4, "20 failures, threshold 5: 4 lockouts"
    assert all(r.locked_until in (None, 950.0) for r in rows)


async def test_login_guard_clear_and_prune(storage: Storage) -> None:
    g = storage.login_guards
    await g.fail("old", 10.0, POLICY)
    await g.fail("new", 500.0, POLICY)
    locked = GuardPolicy(window=300.0, threshold=1, lockout=10_000.0)
    await g.fail("locked", 10.0, locked)
    assert await g.prune(window_start=400.0, now=600.0, limit=10) == 1  # "old" only
    assert await g.get("old") is None
    assert await g.get("locked") is not None and await g.get("new") is not None
    assert await g.clear("new") is True
    assert await g.clear("new") is False


async def test_nodes_crud_and_heartbeats(storage: Storage) -> None:
    a = Node(id="id-a", name="truck-1", labels={"env": "prod"}, joined=1.0, caps=("resume",))
    b = Node(id="id-b", name="truck-2", joined=2.0)
    await storage.nodes.add(a)
    await storage.nodes.add(b)
    assert await storage.nodes.get("id-a") == a
    assert await storage.nodes.get("truck-1") == a, "found by name too"
    assert await storage.nodes.get("nope") is None
    with pytest.raises(Conflict):
        await storage.nodes.add(Node(id="id-c", name="truck-1"))
    with pytest.raises(Conflict):
        await storage.nodes.add(Node(id="id-a", name="other"))
    missing = await storage.nodes.heartbeats(
        [
            Beat("id-a", 60.0, {"env": "dev"}, "1.2", 7, 50.0, 120.0, ("resume", "x.y")),
            Beat("ghost", 1.0, {}),
        ]
    )
    assert missing == ["ghost"]
    got = await storage.nodes.get("truck-1")
    assert got is not None
    assert (got.last_seen, dict(got.labels), got.version) == (60.0, {"env": "dev"}, "1.2")
    assert (got.audit_pending, got.audit_oldest, got.clock_skew) == (7, 50.0, 120.0)
    assert got.caps == ("resume", "x.y")
    await storage.nodes.heartbeats([Beat("id-a", 61.0, {"env": "dev"}, "1.1")])
    got = await storage.nodes.get("id-a")
    assert got is not None and got.caps == (), "an older agent's beat has none"
    assert [n.caps for n in await storage.nodes.all()] == [(), ()]
    assert [n.name for n in await storage.nodes.all()] == ["truck-1", "truck-2"]
    assert await storage.nodes.delete("truck-1") is True
    assert await storage.nodes.delete("id-b") is True
    assert await storage.nodes.delete("id-b") is False
    assert await storage.nodes.all() == []


async def test_node_recording_modes(storage: Storage) -> None:
    await storage.nodes.add(Node(id="id-a", name="a"))
    await storage.nodes.add(Node(id="id-b", name="b"))
    node = await storage.nodes.set_recording("a", "proxy")
    assert node is not None and node.recording == "proxy"
    assert await storage.nodes.set_recording("nope", "proxy") is None
    with pytest.raises(ValueError):
        await storage.nodes.set_recording("a", "sideways")
    assert await storage.nodes.recordings(["id-a", "id-b", "gone"]) == {
        "id-a": "proxy",
        "id-b": "off",
    }


async def test_presence_makes_nodes_online(storage: Storage) -> None:
    now = time.time()
    for i in range(3):
        await storage.nodes.add(Node(id=f"id-{i}", name=f"n{i}"))
    await storage.presence.beat("id-0", "hub-a", now + 60)
    await storage.presence.beat_many(
        [Presence("id-0", "hub-b", now + 60), Presence("id-1", "hub-b", now + 60)]
    )
    await storage.presence.beat("id-2", "hub-a", now - 1)  # already expired
    nodes = {n.id: n for n in await storage.nodes.all()}
    assert (nodes["id-0"].online, nodes["id-0"].held_by) == (True, ("hub-a", "hub-b"))
    assert (nodes["id-1"].online, nodes["id-1"].held_by) == (True, ("hub-b",))
    assert (nodes["id-2"].online, nodes["id-2"].held_by) == (False, ())
    holders = await storage.presence.holders("id-0", now)
    assert [(p.hub_id, p.expires) for p in holders] == [("hub-a", now + 60), ("hub-b", now + 60)]
    await storage.presence.beat("id-0", "hub-a", now + 120)  # a renewal moves the lease
    assert (await storage.presence.holders("id-0", now))[0].expires == now + 120

    assert await storage.presence.drop_hub("hub-b") == 2  # hub B restarts
    node0, node1 = await storage.nodes.get("id-0"), await storage.nodes.get("id-1")
    assert node0 is not None and node0.held_by == ("hub-a",), "hub A's lease is untouched"
    assert node1 is not None and not node1.online
    await storage.presence.drop("id-0", "hub-a")
    node0 = await storage.nodes.get("n0")
    assert node0 is not None and not node0.online
    assert await storage.presence.expire(now, limit=10) == 1  # id-2's dead lease
    assert await storage.presence.expire(now, limit=10) == 0


async def test_node_delete_drops_its_presence(storage: Storage) -> None:
    now = time.time()
    await storage.nodes.add(Node(id="id-a", name="a"))
    await storage.presence.beat("id-a", "hub-a", now + 60)
    assert await storage.nodes.delete("a")
    assert await storage.presence.holders("id-a", now) == []


async def test_locks_add_list_and_atomic_delete(storage: Storage) -> None:
    now = time.time()
    a = Lock("0123456789ab", "user", "alice", "incident", now, None, "admin")
    b = Lock("0123456789ac", "node", "truck-1", "", now + 1, now + 60, "admin")
    gone = Lock("0123456789ad", "login", "root", "", now - 10, now - 1, "admin")
    for lock in (a, b, gone):
        await storage.locks.add(lock)
    with pytest.raises(Conflict):
        await storage.locks.add(a)
    assert await storage.locks.all(now) == [a, b], "oldest first, expired left out"
    results = await asyncio.gather(*(storage.locks.delete(a.id) for _ in range(20)))
    assert [r for r in results if r is not None] == [a], "deleted exactly once"
    assert await storage.locks.all(now) == [b]


async def _next(changes: AsyncIterator[Change]) -> Change:
    return await asyncio.wait_for(anext(changes), timeout=1.0)


async def test_change_feed_carries_writes(storage: Storage) -> None:
    changes = storage.changes()
    first = asyncio.ensure_future(_next(changes))  # subscribed once it starts waiting
    await asyncio.sleep(0)
    now = time.time()
    await storage.locks.add(Lock("0123456789ab", "user", "alice", "", now))
    assert await first == Change("locks", "0123456789ab")
    await storage.roles.put(Role("lab"))
    assert await _next(changes) == Change("roles", "lab")
    await storage.users.put(_user())
    assert await _next(changes) == Change("users", "alice")
    await storage.nodes.add(Node(id="id-a", name="a"))
    assert await _next(changes) == Change("nodes", "id-a")
    await storage.nodes.set_recording("a", "proxy")
    assert await _next(changes) == Change("nodes", "id-a")
    assert await storage.locks.delete("0123456789ab") is not None
    assert await _next(changes) == Change("locks", "0123456789ab")
    await changes.aclose()  # type: ignore[attr-defined]


# == audit, authorities, rotation, settings, firmware, trusted keys, blobs ==============


async def test_engine_name(storage: Storage) -> None:
    assert storage.engine in ("sqlite", "postgresql")


def _ev(i: int, *, node: str = "n1", seq: int | None = None, **kw: Any) -> AuditEvent:
    return AuditEvent(
        id=f"ev{i:04d}",
        type=kw.pop("type", "session.start"),
        time=1000.0 + i,
        node=node,
        user=kw.pop("user", "alice"),
        login="pi",
        session_id=kw.pop("session_id", ""),
        seq=i if seq is None else seq,
        fields=kw.pop("fields", {"n": i}),
    )


async def _next_change(feed: AsyncIterator[Change], topic: str) -> Change:
    async def first() -> Change:
        async for change in feed:
            if change.topic == topic:
                return change
        raise AssertionError("feed closed")

    return await asyncio.wait_for(first(), 1.0)


async def test_audit_insert_is_idempotent_and_refuses_reused_seq(storage: Storage) -> None:
    events = [_ev(i) for i in range(1, 6)]
    assert (await storage.audit.insert_checked("n1", events)).inserted == 5
    again = await storage.audit.insert_checked("n1", events)  # a re-sent batch
    assert again == Inserted(0)
    reused = await storage.audit.insert_checked("n1", [_ev(99, seq=3)])
    assert reused.inserted == 0
    assert reused.reused == (ReusedSeq(3, "ev0099", "ev0003"),)
    assert reused.seq_floor == 6
    assert await storage.audit.count() == 5
    assert await storage.audit.count("n1") == 5
    assert await storage.audit.count("other") == 0


async def test_audit_20_concurrent_batches_store_each_event_once(storage: Storage) -> None:
    batch = [_ev(i) for i in range(1, 11)]
    results = await asyncio.gather(*(storage.audit.insert_checked("n1", batch) for _ in range(20)))
    assert sum(r.inserted for r in results) == 10
    assert await storage.audit.count() == 10


async def test_audit_search_filters_order_and_pages(storage: Storage) -> None:
    await storage.audit.insert_checked(
        "n1", [_ev(i, user="bob" if i % 2 else "alice") for i in range(1, 2101)]
    )
    await storage.audit.record(_ev(5000, node="hub", seq=0, type="user.login"))
    everything = [e async for e in storage.audit.iter_search(AuditQuery(limit=None))]
    assert len(everything) == 2101
    assert [e.time for e in everything] == sorted(e.time for e in everything)
    bob = await storage.audit.search(AuditQuery(user="bob", limit=None))
    assert len(bob) == 1050 and {e.user for e in bob} == {"bob"}
    window = await storage.audit.search(AuditQuery(since=1010.0, until=1020.0))
    assert [e.id for e in window] == [f"ev{i:04d}" for i in range(10, 20)]
    newest = await storage.audit.search(AuditQuery(limit=3, newest_first=True))
    assert [e.id for e in newest] == ["ev5000", "ev2100", "ev2099"]
    logins = await storage.audit.search(AuditQuery(type="user.login", node="hub"))
    assert [(e.node, e.fields) for e in logins] == [("hub", {"n": 5000})]


async def test_audit_sessions(storage: Storage) -> None:
    await storage.audit.insert_checked(
        "n1",
        [
            _ev(3, session_id="abcd-1", user="alice"),
            _ev(1, session_id="abcd-1", user="alice"),
            _ev(2, session_id="abce-2", user="bob"),
        ],
    )
    assert [e.seq for e in await storage.audit.session("abcd-1")] == [1, 3]
    assert await storage.audit.session_ids("abc", None, 10) == ["abcd-1", "abce-2"]
    assert await storage.audit.session_ids("abc", "bob", 10) == ["abce-2"]
    assert await storage.audit.session_ids("abc%", None, 10) == []  # no wildcards


def _ca(kind: CAKindName, slot: CASlot, tag: bytes) -> StoredCA:
    return StoredCA(kind, slot, b"KEY-" + tag, f"ssh-ed25519 AAAA{tag.decode()} c", b"PEM-" + tag)


async def test_authorities_create_once(storage: Storage) -> None:
    assert await storage.authorities.all() == []
    first = [_ca("user", "current", b"u1"), _ca("host", "current", b"h1")]
    results = await asyncio.gather(
        storage.authorities.create(first),
        storage.authorities.create([_ca("user", "current", b"u2"), _ca("host", "current", b"h2")]),
    )
    assert sorted(results) == [False, True]
    stored = await storage.authorities.all()
    assert len(stored) == 2 and {c.slot for c in stored} == {"current"}
    assert len({c.private_key[-1:] for c in stored}) == 1  # one creator's pair, not a mix
    assert await storage.authorities.create(first) is False
    await storage.authorities.replace_keys([replace(c, private_key=b"ENC") for c in stored])
    assert {c.private_key for c in await storage.authorities.all()} == {b"ENC"}


async def test_rotation_advance_is_compare_and_set(storage: Storage) -> None:
    await storage.authorities.create([_ca("user", "current", b"u1"), _ca("host", "current", b"h1")])
    record = await storage.rotation.get()
    assert record.revision == 0
    states = {"user": {"phase": "init"}, "host": {"phase": "standby"}}
    results = await asyncio.gather(
        *(storage.rotation.advance(0, states, put=[_ca("user", "next", b"n")]) for _ in range(2)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Conflict) for r in results) == 1
    assert [r for r in results if isinstance(r, RotationRecord)] == [RotationRecord(states, 1)]
    assert await storage.rotation.get() == RotationRecord(states, 1)
    assert {(c.kind, c.slot) for c in await storage.authorities.all()} == {
        ("user", "current"),
        ("host", "current"),
        ("user", "next"),
    }
    done = {"user": {"phase": "standby"}, "host": {"phase": "standby"}}
    promoted = replace(_ca("user", "next", b"n"), slot="current")
    await storage.rotation.advance(1, done, put=[promoted], remove=[("user", "next")])
    cas = {(c.kind, c.slot): c for c in await storage.authorities.all()}
    assert set(cas) == {("user", "current"), ("host", "current")}
    assert cas["user", "current"].private_key == b"KEY-n"
    with pytest.raises(Conflict):
        await storage.rotation.advance(1, states)


async def test_rotation_acks(storage: Storage) -> None:
    assert await storage.rotation.acks() == {}
    await storage.rotation.ack("n1", "u1.1-h0.0")
    await storage.rotation.ack("n1", "u1.2-h0.0")
    await storage.rotation.ack("n2", "u1.2-h0.0")
    assert await storage.rotation.acks() == {"n1": "u1.2-h0.0", "n2": "u1.2-h0.0"}
    await storage.rotation.forget_acks()
    assert await storage.rotation.acks() == {}


async def test_settings(storage: Storage) -> None:
    assert await storage.settings.get("cluster") is None
    results = await asyncio.gather(
        *(storage.settings.put_if_absent("cluster", f"c{i}") for i in range(20))
    )
    assert len(set(results)) == 1
    assert await storage.settings.get("cluster") == results[0]
    await storage.settings.put("cluster", "other")
    assert await storage.settings.get("cluster") == "other"


def _rollout(rid: str = "fw-1", created: float = 100.0) -> Rollout:
    return Rollout(
        id=rid,
        created=created,
        name="os",
        version="2.0",
        bundle=blob_name(b"bundle"),
        sha256=blob_name(b"bundle"),
        size=6,
        selector={"env": "lab"},
        canary_percent=None,
        max_parallel=2,
        rate=None,
        force=False,
        state="running",
    )


async def test_firmware_rollout_and_claims(storage: Storage) -> None:
    await storage.firmware.create(_rollout(), [("id1", "a", True), ("id2", "b", False)])
    assert await storage.firmware.rollout("fw-1") == _rollout()
    assert await storage.firmware.rollouts("running") == [_rollout()]
    assert await storage.firmware.rollouts("done") == []
    nodes = await storage.firmware.nodes("fw-1")
    assert [(n.node_id, n.canary, n.state, n.updated) for n in nodes] == [
        ("id1", True, "pending", 100.0),
        ("id2", False, "pending", 100.0),
    ]
    claims = await asyncio.gather(
        *(
            storage.firmware.update_node(
                "fw-1", "id1", "sending", "", 101.0, attempt=True, expect="pending"
            )
            for _ in range(20)
        )
    )
    assert claims.count(True) == 1
    assert await storage.firmware.update_node("fw-1", "id1", "x", "", 102.0, resumed_from=50)
    assert await storage.firmware.update_node("fw-1", "id1", "y", "d" * 999, 103.0, resumed_from=9)
    node = (await storage.firmware.nodes("fw-1"))[0]
    assert (node.state, node.resumed_from, node.attempts, node.updated) == ("y", 50, 1, 103.0)
    assert len(node.detail) <= 400
    assert await storage.firmware.replace_canary("fw-1", "id1", "id2", "offline", 104.0)
    assert not await storage.firmware.replace_canary("fw-1", "id1", "id2", "again", 105.0)
    assert [n.node_id for n in await storage.firmware.nodes("fw-1") if n.canary] == ["id2"]
    assert await storage.firmware.finish("fw-1", "stopped", "canary failed", 106.0)
    assert not await storage.firmware.finish("fw-1", "done", "", 107.0)
    ended = await storage.firmware.rollout("fw-1")
    assert ended is not None and (ended.state, ended.reason, ended.finished) == (
        "stopped",
        "canary failed",
        106.0,
    )


async def test_firmware_claim_is_compare_and_set(storage: Storage) -> None:
    await storage.firmware.create(_rollout(), [("id1", "a", True), ("id2", "b", False)])
    claims = await asyncio.gather(
        *(storage.firmware.claim("fw-1", "id1", 0, 101.0) for _ in range(20))
    )
    assert claims.count(True) == 1
    node = (await storage.firmware.nodes("fw-1"))[0]
    assert (node.claims, node.state, node.attempts, node.updated) == (1, "pending", 0, 101.0)
    assert not await storage.firmware.claim("fw-1", "id1", 0, 102.0)  # a stale read
    assert await storage.firmware.claim("fw-1", "id1", 1, 102.0)
    assert await storage.firmware.update_node("fw-1", "id2", "installed", "", 103.0)
    assert not await storage.firmware.claim("fw-1", "id2", 0, 104.0)  # final
    assert await storage.firmware.finish("fw-1", "stopped", "tctl", 105.0)
    assert not await storage.firmware.claim("fw-1", "id1", 2, 106.0)  # not running


async def test_firmware_claim_once_across_two_storages(
    storage_pair: tuple[Storage, Storage],
) -> None:
    """Two hubs on one database: a node's step goes to exactly one of them."""
    first, second = storage_pair
    await first.firmware.create(_rollout(), [(f"id{i}", f"n{i}", False) for i in range(10)])
    for i in range(10):
        node_id = f"id{i}"
        won = await asyncio.gather(
            *(s.firmware.claim("fw-1", node_id, 0, 101.0) for s in (first, second) * 3)
        )
        assert won.count(True) == 1, (node_id, won)
    assert {n.claims for n in await second.firmware.nodes("fw-1")} == {1}


async def test_trusted_keys(storage: Storage) -> None:
    key = TrustedKey("SHA256:abc", "ssh-ed25519 AAAAC3", "build", 10.0)
    assert await asyncio.gather(*(storage.trusted_keys.add(key) for _ in range(5))) == [
        True,
        False,
        False,
        False,
        False,
    ]
    assert await storage.trusted_keys.all() == [key]
    assert await storage.trusted_keys.remove("SHA256:abc")
    assert not await storage.trusted_keys.remove("SHA256:abc")
    assert await storage.trusted_keys.all() == []


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_blobs(storage: Storage) -> None:
    data = b"x" * 100_000 + b"end"
    name = blob_name(data)
    assert await storage.blobs.size(name) is None
    assert await storage.blobs.put(name, _chunks(data[:7], data[7:]), len(data)) == len(data)
    assert await storage.blobs.size(name) == len(data)
    assert await storage.blobs.read(name, len(data) - 5, 100) == b"xxend"
    assert await storage.blobs.names() == [name]
    with pytest.raises(Conflict):  # bytes that are not the name
        await storage.blobs.put(blob_name(b"other"), _chunks(b"not it"), 100)
    with pytest.raises(Conflict):  # over the cap
        await storage.blobs.put(blob_name(b"12345"), _chunks(b"123", b"45"), 4)
    assert await storage.blobs.names() == [name]
    with pytest.raises(NotFound):
        await storage.blobs.read(blob_name(b"missing"), 0, 1)
    assert await storage.blobs.delete(name)
    assert not await storage.blobs.delete(name)
    assert await storage.blobs.names() == []


async def test_part_b_writes_reach_the_change_feed(storage: Storage) -> None:
    feed = storage.changes()
    try:
        pending = asyncio.ensure_future(_next_change(feed, "rotation"))
        await asyncio.sleep(0)
        await storage.rotation.advance(0, {"user": {}, "host": {}})
        assert (await pending).topic == "rotation"
        pending = asyncio.ensure_future(_next_change(feed, "firmware"))
        await asyncio.sleep(0)
        await storage.firmware.create(_rollout(), [])
        assert await pending == Change("firmware", "fw-1")
        pending = asyncio.ensure_future(_next_change(feed, "trusted"))
        await asyncio.sleep(0)
        await storage.trusted_keys.add(TrustedKey("SHA256:k", "ssh-ed25519 A", "", 1.0))
        assert await pending == Change("trusted", "SHA256:k")
    finally:
        await feed.aclose()  # type: ignore[attr-defined]


# == hubs, leases, presence.all, audit retention (a cluster of hubs) ====================


def _hub(hub_id: str, expires: float, **kw: Any) -> HubRecord:
    fields: dict[str, Any] = {
        "id": hub_id,
        "public_addr": f"{hub_id}.example:3080",
        "peer_addr": f"{hub_id}.example:3081",
        "started": 900.0,
        "expires": expires,
        "agents": 0,
        "version": "1.0",
        "beat_at": expires - 15,
    }
    fields.update(kw)
    return HubRecord(**fields)


async def test_hubs_beat_live_get_drop_expire(storage: Storage) -> None:
    now = 1000.0
    b, a = _hub("hub-b", now + 15), _hub("hub-a", now + 15, peer_addr="")
    gone = _hub("hub-c", now - 1)
    for hub in (b, a, gone):
        await storage.hubs.beat(hub)
    assert await storage.hubs.live(now) == [a, b], "live ones by id; a lapsed one left out"
    assert await storage.hubs.get("hub-c") == gone, "still stored until expired"
    renewed = replace(b, expires=now + 30, agents=12, beat_at=now)
    await storage.hubs.beat(renewed)  # a renewal replaces the record
    assert await storage.hubs.get("hub-b") == renewed
    assert await storage.hubs.live(now + 20) == [renewed]
    assert await storage.hubs.drop("hub-a") is True  # a clean stop
    assert await storage.hubs.drop("hub-a") is False
    assert await storage.hubs.get("hub-a") is None
    for i in range(5):
        await storage.hubs.beat(_hub(f"old-{i}", now - 10 + i))
    assert await storage.hubs.expire(now, limit=4) == 4
    assert await storage.hubs.expire(now, limit=4) == 2  # old-4 and hub-c
    assert await storage.hubs.expire(now, limit=4) == 0
    assert [h.id for h in await storage.hubs.live(0.0)] == ["hub-b"]


async def test_lease_acquire_renew_takeover_release(storage: Storage) -> None:
    leases = storage.leases
    assert await leases.get("job") is None
    assert await leases.acquire("job", "hub-a", 115.0, 100.0) is True  # absent: taken
    assert await leases.get("job") == Lease("job", "hub-a", 115.0, 100.0)
    assert await leases.acquire("job", "hub-b", 120.0, 105.0) is False  # hub A has it
    assert await leases.acquire("job", "hub-a", 120.0, 105.0) is True  # renewal
    assert await leases.get("job") == Lease("job", "hub-a", 120.0, 100.0), "acquired kept"
    assert await leases.acquire("job", "hub-b", 135.0, 119.9) is False  # not lapsed yet
    assert await leases.acquire("job", "hub-b", 135.0, 120.0) is True  # lapsed: taken over
    assert await leases.get("job") == Lease("job", "hub-b", 135.0, 120.0)
    assert await leases.acquire("job", "hub-a", 140.0, 125.0) is False
    assert await leases.release("job", "hub-a") is False, "a non-holder's release: no-op"
    assert await leases.get("job") == Lease("job", "hub-b", 135.0, 120.0)
    assert await leases.acquire("other", "hub-a", 140.0, 125.0) is True
    assert [(x.name, x.holder) for x in await leases.all()] == [
        ("job", "hub-b"),
        ("other", "hub-a"),
    ]
    assert await leases.release("job", "hub-b") is True
    assert await leases.release("job", "hub-b") is False
    assert await leases.acquire("job", "hub-a", 140.0, 126.0) is True  # free again
    assert await leases.get("job") == Lease("job", "hub-a", 140.0, 126.0)


async def test_lease_two_holders_racing_exactly_one_wins(storage: Storage) -> None:
    now = time.time()
    calls = [
        storage.leases.acquire("race", holder, now + 15, now)
        for _ in range(10)
        for holder in ("hub-a", "hub-b")
    ]
    results = await asyncio.gather(*calls)
    lease = await storage.leases.get("race")
    assert lease is not None
    winners = {("hub-a", "hub-b")[i % 2] for i, won in enumerate(results) if won}
    assert winners == {lease.holder}, results
    assert results.count(True) == 10, "the winner's every call is a take or a renewal"


async def test_lease_race_across_two_storages(storage_pair: tuple[Storage, Storage]) -> None:
    """Two hubs on one database, each racing for one lease: one holder, never both."""
    first, second = storage_pair
    for round_ in range(5):
        now = 1000.0 + 100 * round_  # each round finds the last one's lease lapsed
        results = await asyncio.gather(
            *(
                s.leases.acquire(f"lease-{round_ % 2}", holder, now + 15, now)
                for _ in range(10)
                for s, holder in ((first, "hub-a"), (second, "hub-b"))
            )
        )
        won = {("hub-a", "hub-b")[i % 2] for i, ok in enumerate(results) if ok}
        lease = await second.leases.get(f"lease-{round_ % 2}")
        assert lease is not None and won == {lease.holder}, (round_, results)


async def test_presence_all_is_every_live_lease(storage: Storage) -> None:
    now = 1000.0
    await storage.presence.beat_many(
        [
            Presence("id-b", "hub-a", now + 20),
            Presence("id-a", "hub-b", now + 20),
            Presence("id-a", "hub-a", now + 20),
            Presence("id-c", "hub-a", now - 1),  # lapsed
        ]
    )
    assert await storage.presence.all(now) == [
        Presence("id-a", "hub-a", now + 20),
        Presence("id-a", "hub-b", now + 20),
        Presence("id-b", "hub-a", now + 20),
    ]
    assert await storage.presence.all(now + 20) == []


async def test_audit_prune_oldest_first_in_batches(storage: Storage) -> None:
    # ev0001..ev0030 at times 1001..1030; a session's recording chunks are events too
    await storage.audit.insert_checked(
        "n1", [_ev(i, session_id="s-1" if i <= 12 else "s-2") for i in range(1, 31)]
    )
    await storage.audit.record(_ev(40, node="hub", seq=0, type="user.login"))
    assert await storage.audit.prune(1021.0, limit=8) == 8
    assert await storage.audit.prune(1021.0, limit=8) == 8
    assert await storage.audit.prune(1021.0, limit=8) == 4, "a short batch: done"
    assert await storage.audit.prune(1021.0, limit=8) == 0
    left = await storage.audit.search(AuditQuery(limit=None))
    assert [e.id for e in left] == [f"ev{i:04d}" for i in range(21, 31)] + ["ev0040"]
    assert await storage.audit.session("s-1") == []
    assert len(await storage.audit.session("s-2")) == 10
    # a pruned event re-sent is stored again (its agent acked it long ago: none does)
    assert (await storage.audit.insert_checked("n1", [_ev(25)])).inserted == 0


async def test_hub_and_lease_changes_reach_the_change_feed(storage: Storage) -> None:
    feed = storage.changes()
    try:
        pending = asyncio.ensure_future(_next_change(feed, "hubs"))
        await asyncio.sleep(0)
        await storage.hubs.beat(_hub("hub-a", 1015.0))  # a new hub
        assert await pending == Change("hubs", "hub-a")
        pending = asyncio.ensure_future(_next_change(feed, "leases"))
        await asyncio.sleep(0)
        assert await storage.leases.acquire("job", "hub-a", 115.0, 100.0)
        assert await pending == Change("leases", "job")
        # a renewal is not announced (the next change is another lease's); a release is
        pending = asyncio.ensure_future(_next_change(feed, "leases"))
        await asyncio.sleep(0)
        assert await storage.leases.acquire("job", "hub-a", 130.0, 110.0)
        assert await storage.leases.acquire("other", "hub-a", 130.0, 110.0)
        assert await pending == Change("leases", "other")
        pending = asyncio.ensure_future(_next_change(feed, "leases"))
        await asyncio.sleep(0)
        assert await storage.leases.release("job", "hub-a")
        assert await pending == Change("leases", "job")
        pending = asyncio.ensure_future(_next_change(feed, "hubs"))
        await asyncio.sleep(0)
        assert await storage.hubs.drop("hub-a")
        assert await pending == Change("hubs", "hub-a")
    finally:
        await feed.aclose()  # type: ignore[attr-defined]


# == SSO: connectors, SSO state, SSO users ================================================


def _connector(name: str = "okta", kind: str = "oidc", created: float = 100.0) -> StoredConnector:
    spec = '{"issuer": "https://idp.example", "client_secret": "enc:SECRET-BYTES"}'
    return StoredConnector(name, kind, spec, created)


async def test_connectors_crud_and_changes(storage: Storage) -> None:
    feed = storage.changes()
    try:
        assert await storage.connectors.get("okta") is None
        assert await storage.connectors.all() == []
        pending = asyncio.ensure_future(_next_change(feed, "connectors"))
        await asyncio.sleep(0)
        await storage.connectors.put(_connector())
        assert await pending == Change("connectors", "okta")
        await storage.connectors.put(_connector("github", "github", 50.0))
        assert await _next_change(feed, "connectors") == Change("connectors", "github")
        assert await storage.connectors.get("okta") == _connector()
        assert [c.name for c in await storage.connectors.all()] == ["github", "okta"]
        replaced = replace(_connector(), kind="saml", spec="<EntityDescriptor/>", created=200.0)
        await storage.connectors.put(replaced)  # create or replace
        assert await _next_change(feed, "connectors") == Change("connectors", "okta")
        assert await storage.connectors.get("okta") == replaced
        assert await storage.connectors.delete("okta") is True
        assert await _next_change(feed, "connectors") == Change("connectors", "okta")
        assert await storage.connectors.delete("okta") is False  # announces nothing:
        await storage.connectors.delete("github")  # the next change is github's
        assert await _next_change(feed, "connectors") == Change("connectors", "github")
        assert await storage.connectors.all() == []
        assert "SECRET" not in repr(_connector()) and "okta" in repr(_connector())
    finally:
        await feed.aclose()  # type: ignore[attr-defined]


async def test_sso_state_add_conflict_and_take_once(storage: Storage) -> None:
    sso = storage.sso
    assert await sso.add("state-1", '{"connector": "okta"}', 160.0, 100.0, cap=10) is True
    with pytest.raises(Conflict) as taken:
        await sso.add("state-1", "other", 160.0, 101.0, cap=10)
    assert "state-1" not in str(taken.value), "a key may be a login's secret"
    assert await sso.take("state-1", 102.0) == '{"connector": "okta"}'
    assert await sso.take("state-1", 102.0) is None, "taken once"
    assert await sso.take("never-stored", 102.0) is None
    assert await sso.add("state-1", "again", 170.0, 103.0, cap=10) is True  # taken: free again
    assert await sso.take("state-1", 104.0) == "again"


async def test_sso_state_cap_counts_only_unexpired_entries(storage: Storage) -> None:
    sso = storage.sso
    for i in range(3):  # expired at 100 (expiry exclusive: at 100 itself too)
        assert await sso.add(f"old-{i}", "v", 90.0 + 5 * i, 50.0, cap=3) is True
    for i in range(3):  # the three old ones do not count against the cap
        assert await sso.add(f"live-{i}", "v", 200.0, 100.0, cap=3) is True
    assert await sso.add("one-too-many", "v", 200.0, 100.0, cap=3) is False
    assert await sso.take("one-too-many", 100.0) is None, "a refused add stores nothing"
    assert await sso.add("one-too-many", "v", 200.0, 100.0, cap=4) is True
    assert await sso.add("cap-zero", "v", 200.0, 100.0, cap=0) is False
    # an entry past its expiry is absent: its key can be stored again, over the old row
    assert await sso.add("old-0", "new", 300.0, 150.0, cap=10) is True
    assert await sso.take("old-0", 150.0) == "new"
    # when the live ones lapse, there is room again
    assert await sso.add("later", "v", 400.0, 200.0, cap=1) is True


async def test_sso_state_cap_is_per_kind_of_key(storage: Storage) -> None:
    """A kind is the key up to its first ':': SAML replay ids filling their cap never
    block pending logins, and the other way round."""
    sso = storage.sso
    for i in range(3):
        assert await sso.add(f"saml-assertion:{i}", "", 200.0, 100.0, cap=3) is True
    assert await sso.add("saml-assertion:x", "", 200.0, 100.0, cap=3) is False
    assert await sso.add("state:a", "{}", 200.0, 100.0, cap=3) is True
    assert await sso.add("start:b", "{}", 200.0, 100.0, cap=1) is True  # another kind
    assert await sso.add("state:b", "{}", 200.0, 100.0, cap=1) is False
    assert await sso.add("statez:b", "{}", 200.0, 100.0, cap=1) is True
    # a key with no ":" counts every entry
    assert await sso.add("plain", "v", 200.0, 100.0, cap=6) is False
    assert await sso.add("plain", "v", 200.0, 100.0, cap=7) is True


async def test_sso_state_take_of_an_expired_key_is_none_and_deletes_it(
    storage: Storage,
) -> None:
    sso = storage.sso
    assert await sso.add("k", "v", 110.0, 100.0, cap=10) is True
    assert await sso.take("k", 110.0) is None, "expiry exclusive"
    assert await sso.prune(1000.0, limit=10) == 0, "the expired take deleted the row"
    assert await sso.add("k2", "v", 110.0, 100.0, cap=10) is True
    assert await sso.take("k2", 109.0) == "v"


async def test_sso_state_prune_expired_in_batches(storage: Storage) -> None:
    sso = storage.sso
    for i in range(5):
        assert await sso.add(f"old-{i}", f"v{i}", 100.0 + i, 90.0, cap=100) is True
    for i in range(2):
        assert await sso.add(f"live-{i}", f"w{i}", 500.0, 90.0, cap=100) is True
    assert await sso.prune(200.0, limit=3) == 3
    assert await sso.prune(200.0, limit=3) == 2, "a short batch: done"
    assert await sso.prune(200.0, limit=3) == 0
    assert [await sso.take(f"live-{i}", 200.0) for i in range(2)] == ["w0", "w1"]
    assert await sso.take("old-4", 50.0) is None, "pruned rows are gone, whatever now says"


async def test_sso_state_concurrent_takes_exactly_one_wins(storage: Storage) -> None:
    assert await storage.sso.add("login", "pending", 200.0, 100.0, cap=10) is True
    results = await asyncio.gather(*(storage.sso.take("login", 101.0) for _ in range(20)))
    assert results.count("pending") == 1 and results.count(None) == 19


async def test_sso_state_two_hubs_race_take_and_cap(
    storage_pair: tuple[Storage, Storage],
) -> None:
    """Two hubs (two Storage objects) on one database: a key is taken once, and adds
    racing past the cap store exactly ``cap`` entries."""
    one, two = storage_pair
    for i in range(5):
        assert await one.sso.add(f"login-{i}", f"v{i}", 200.0, 100.0, cap=100) is True
    takes = await asyncio.gather(
        *((one, two)[j % 2].sso.take(f"login-{j % 5}", 101.0) for j in range(40))
    )
    assert sorted(t for t in takes if t is not None) == [f"v{i}" for i in range(5)]
    adds = await asyncio.gather(
        *((one, two)[j % 2].sso.add(f"race-{j}", "v", 200.0, 101.0, cap=7) for j in range(30))
    )
    assert adds.count(True) == 7
    assert await one.sso.prune(1000.0, limit=100) == 7, "exactly the 7 admitted are stored"

    async def add_same(storage: Storage) -> object:
        try:
            return await storage.sso.add("same", "v", 200.0, 101.0, cap=100)
        except Conflict as exc:
            return exc

    same = await asyncio.gather(*(add_same((one, two)[j % 2]) for j in range(10)))
    assert same.count(True) == 1 and sum(isinstance(r, Conflict) for r in same) == 9


async def test_users_round_trip_sso_fields(storage: Storage) -> None:
    traits = {"groups": ("admins", "devs"), "email": ("a@example.com",), "none": ()}
    sso_user = _user(
        "alice@okta",
        password_hash=None,
        totp_secret=None,
        connector="okta",
        traits=traits,
        expires=5000.0,
    )
    await storage.users.put(sso_user)
    await storage.users.put(_user("bob"))  # a local user: the new fields' defaults
    got = await storage.users.get("alice@okta")
    assert got == sso_user and got is not None
    assert dict(got.traits) == traits and all(type(v) is tuple for v in got.traits.values())
    bob = await storage.users.get("bob")
    assert bob is not None and (bob.connector, dict(bob.traits), bob.expires) == (None, {}, None)
    assert await storage.users.all() == [sso_user, _user("bob")]
    # a replace rewrites them (a later login with other claims; a user made local)
    await storage.users.put(replace(sso_user, traits={"groups": ("devs",)}, expires=9000.0))
    got = await storage.users.get("alice@okta")
    assert got is not None and (dict(got.traits), got.expires) == ({"groups": ("devs",)}, 9000.0)
    await storage.users.put(replace(sso_user, connector=None, traits={}, expires=None))
    got = await storage.users.get("alice@okta")
    assert got is not None and (got.connector, dict(got.traits), got.expires) == (None, {}, None)
    assert await storage.users.record_totp_step("alice@okta", 7) is True
    got = await storage.users.get("alice@okta")
    assert got is not None and got.totp_last_step == 7 and got.connector is None
