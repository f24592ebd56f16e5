"""The storage contract: the same cases against every engine (``storage`` fixture).

Each case uses only :mod:`hub.storage.api`; an engine passes when it behaves
exactly as the interface's docstrings say, atomic operations included.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from hub.storage.api import (
    AuditQuery,
    CAKindName,
    CASlot,
    Change,
    Conflict,
    Inserted,
    NotFound,
    ReusedSeq,
    Rollout,
    RotationRecord,
    Storage,
    StoredCA,
    TrustedKey,
    blob_name,
)
from remoteler.audit.events import AuditEvent

# == users, roles, tokens, invites, login guards, nodes, presence, locks, change feed ==


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
