"""Audit ingest through a real hub: a real agent-side Tunnel over TLS websockets."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hubkit import Hub
from websockets.asyncio.client import connect

from edge_agent import forwarder
from edge_agent.outbox import Outbox
from hub.api.server import HubServer
from hub.audit import ingest as audit_ingest
from hub.audit.quota import QuotaConfig
from hub.auth.service import AuthService
from hub.datadir import DataDir
from hub.storage.api import AuditLog, AuditQuery, Inserted, ReusedSeq
from hub.storage.sqlite import open_sqlite
from remoteler import rpc
from remoteler.audit import AuditEvent, EventType, MessageReader, encode_message, make_event
from remoteler.audit.stream import REFUSED_QUOTA, Reply, batch_message, parse_ack, parse_reply
from remoteler.protocol import TUNNEL_SUBPROTOCOL
from remoteler.tlsutil import server_context
from remoteler.wire.aio import Channel, Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.connection import Connection, Role
from remoteler.wire.exceptions import ChannelOpenError
from remoteler.wire.limits import Limits


@dataclasses.dataclass
class AuditHub(Hub):
    store: AuditLog | None = None


@pytest.fixture
async def ahub(tmp_path: Path) -> AsyncIterator[AuditHub]:
    """A HubServer assembled as ``hub start`` does, with its audit store."""
    async with audit_hub(tmp_path) as hub:
        yield hub


@contextlib.asynccontextmanager
async def audit_hub(tmp_path: Path, quota: QuotaConfig | None = None) -> AsyncIterator[AuditHub]:
    data = DataDir(tmp_path / "hubdata")
    cluster = data.init("test")
    user_ca, host_ca = data.load_ca("user"), data.load_ca("host")
    cert, key = data.issue_server_identity(host_ca, ["127.0.0.1"])
    ssl_ctx = server_context(cert, key, [user_ca.x509_pem, host_ca.x509_pem])
    storage = await open_sqlite(data.path)
    store = storage.audit  # the hub's own DATA/audit.db
    auth = AuthService(storage, user_ca, host_ca, cluster, audit=store)
    server = HubServer(auth, storage, audit=store, audit_quota=quota)
    _, port = await server.start("127.0.0.1", 0, ssl_ctx)
    try:
        yield AuditHub(server, auth, storage, port, store)
    finally:
        await server.close()
        await storage.close()


@contextlib.asynccontextmanager
async def agent_tunnel(hub: Hub, ctx: Any) -> AsyncIterator[Tunnel]:
    ws = await connect(
        hub.url("/v1/tunnel"),
        ssl=ctx,
        compression=None,
        subprotocols=[TUNNEL_SUBPROTOCOL],  # type: ignore[list-item]
        open_timeout=5,
    )
    tunnel = Tunnel(ws, Connection(Role.DIALER, Limits(), now=time.monotonic()))
    task = asyncio.ensure_future(tunnel.run())
    try:
        yield tunnel
    finally:
        await tunnel.close()
        await asyncio.wait_for(task, 5)


async def send_batch(
    channel: Channel, reader: MessageReader, events: list[AuditEvent]
) -> list[str]:
    channel.write(encode_message(batch_message(events)))
    await channel.drain()
    while True:
        data = await asyncio.wait_for(channel.read(65536), 5)
        assert data, "channel closed before the ack"
        messages = reader.feed(data)
        if messages:
            (message,) = messages
            return parse_ack(message)


async def ping(hub: Hub) -> None:
    async with connect(hub.url("/v1/rpc"), ssl=hub.tls(), subprotocols=[rpc.SUBPROTOCOL]) as ws:  # type: ignore[list-item]
        assert (await asyncio.wait_for(rpc.RpcClient(ws).call("ping"), 5))["cluster"] == "test"


def _events(n: int, node: str = "someone-else") -> list[AuditEvent]:
    out = []
    for i in range(n):
        e = make_event(EventType.EXEC, node=node, user="alice", command=f"cmd {i}", exit_code=0)
        out.append(dataclasses.replace(e, seq=i + 1))
    return out


async def test_batch_is_stored_under_the_tunnel_node_and_acked_once(ahub: AuditHub) -> None:
    assert ahub.store is not None
    ctx = ahub.tls(*await ahub.node_creds("node-1"))
    node = await ahub.storage.nodes.get("node-1")
    assert node is not None
    events = _events(20)
    async with agent_tunnel(ahub, ctx) as tunnel:
        channel = await tunnel.open_channel("audit", {}, timeout=5)
        reader = MessageReader()
        assert await send_batch(channel, reader, events) == [e.id for e in events]
        assert await ahub.store.count(node.id) == 20 + 1  # + the hub's join event
        # The ack was lost, say: the agent re-sends; acked again, stored once.
        assert await send_batch(channel, reader, events[10:]) == [e.id for e in events[10:]]
        assert await send_batch(channel, reader, []) == []
        channel.close()
    stored = await ahub.store.search(AuditQuery(node=node.id, type="exec"))
    assert [e.id for e in stored] == [e.id for e in events]
    assert {e.node for e in stored} == {node.id}
    assert await ahub.store.count("someone-else") == 0
    (joined,) = await ahub.store.search(AuditQuery(type="join"))
    assert joined.node == node.id and joined.fields["name"] == "node-1"


async def test_resent_batch_on_a_new_tunnel_is_not_duplicated(ahub: AuditHub) -> None:
    assert ahub.store is not None
    ctx = ahub.tls(*await ahub.node_creds("node-1"))
    events = _events(5)
    for _ in range(2):
        async with agent_tunnel(ahub, ctx) as tunnel:
            channel = await tunnel.open_channel("audit", {}, timeout=5)
            assert await send_batch(channel, MessageReader(), events) == [e.id for e in events]
    assert await ahub.store.count(node=None) == 5 + 1  # + the hub's join event


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00\x00\x03\xc1\xc1\xc1",  # not msgpack
        b"\x00\x00\x00\x01\x90",  # an array, not a map
        b"\xff\xff\xff\xff",  # 4 GiB announced
        encode_message({"t": "hello"}),
        encode_message({"t": "batch", "events": [{"id": "nope"}]}),
    ],
)
async def test_garbage_closes_the_channel_only(
    ahub: AuditHub, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    assert ahub.store is not None
    ctx = ahub.tls(*await ahub.node_creds("node-1"))
    caplog.set_level(logging.WARNING, "remoteler.hub.audit")
    async with agent_tunnel(ahub, ctx) as tunnel:
        channel = await tunnel.open_channel("audit", {}, timeout=5)
        channel.write(garbage)
        assert await asyncio.wait_for(channel.read(65536), 5) == b""
        await asyncio.wait_for(channel.wait_closed(), 5)
        # The tunnel survives: a new audit channel still works.
        again = await tunnel.open_channel("audit", {}, timeout=5)
        events = _events(1)
        assert await send_batch(again, MessageReader(), events) == [events[0].id]
    warnings = [r for r in caplog.records if r.name == "remoteler.hub.audit"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert getattr(warnings[0], "node_id", None)
    await ping(ahub)


async def test_other_channel_kinds_are_still_refused(ahub: AuditHub) -> None:
    ctx = ahub.tls(*await ahub.node_creds("node-1"))
    async with agent_tunnel(ahub, ctx) as tunnel:
        with pytest.raises(ChannelOpenError):
            await tunnel.open_channel("ssh", {}, timeout=5)


async def test_audit_session_rpc_is_for_the_sessions_user_only(ahub: AuditHub) -> None:
    assert ahub.store is not None
    alice = ahub.tls(*await ahub.user_creds("alice"))
    bob = ahub.tls(*await ahub.user_creds("bob"))
    session = [
        dataclasses.replace(
            make_event(EventType.SESSION_START, node="x", user="alice", session_id="s1"), seq=2
        ),
        dataclasses.replace(
            make_event(
                EventType.SESSION_DATA,
                node="x",
                user="alice",
                session_id="s1",
                chunk=0,
                codec="raw",
                data=b"hi",
            ),
            seq=3,
        ),
    ]
    await ahub.store.insert_checked("node-x", list(reversed(session)))
    certs = await ahub.store.search(AuditQuery(type="cert.create"))
    assert [(e.user, e.node) for e in certs] == [("alice", "hub"), ("bob", "hub")]

    async def call(ctx: Any, **params: Any) -> Any:
        async with connect(ahub.url("/v1/rpc"), ssl=ctx, subprotocols=[rpc.SUBPROTOCOL]) as ws:  # type: ignore[list-item]
            return await asyncio.wait_for(rpc.RpcClient(ws).call("audit.session", **params), 5)

    got = await call(alice, session_id="s1")
    assert [AuditEvent.from_wire(e) for e in got] == [
        dataclasses.replace(e, node="node-x") for e in session
    ]
    for ctx, sid in ((bob, "s1"), (alice, "nope")):
        with pytest.raises(Exception, match="of yours") as exc:
            await call(ctx, session_id=sid)
        assert type(exc.value).__name__ == "AccessDenied"
    with pytest.raises(Exception, match="user certificate"):
        await call(ahub.tls(), session_id="s1")


async def test_audit_session_rpc_refuses_an_empty_session_id(ahub: AuditHub) -> None:
    """An empty id is no session: the hub must not read every event without one (a full
    scan of the audit table per call) nor hand the caller their own non-session events."""
    assert ahub.store is not None
    alice = ahub.tls(*await ahub.user_creds("alice"))
    # The only events without a session are alice's own (her cert.create).
    assert [e.user for e in await ahub.store.search(AuditQuery(session_id=""))] == ["alice"]
    async with connect(ahub.url("/v1/rpc"), ssl=alice, subprotocols=[rpc.SUBPROTOCOL]) as ws:  # type: ignore[list-item]
        for sid in ("", "ab"):
            with pytest.raises(Exception, match="session") as exc:
                await asyncio.wait_for(rpc.RpcClient(ws).call("audit.session", session_id=sid), 5)
            assert type(exc.value).__name__ in ("UsageError", "AccessDenied")


# -- per-node quota (hub/audit/quota.py) ------------------------------------------


async def _replies(channel: Channel) -> list[Reply]:
    """The hub's replies on the channel until it closes it."""
    reader, out = MessageReader(), []
    while data := await asyncio.wait_for(channel.read(65536), 5):
        out += [parse_reply(m) for m in reader.feed(data)]
    return out


async def test_node_ignoring_its_quota_is_refused_then_cut_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hostile node keeps sending after being told to wait: nothing past its quota is
    stored, its early batches are refused unread, then its audit channel is closed."""
    caplog.set_level(logging.INFO, "remoteler.hub.audit")
    async with audit_hub(tmp_path, QuotaConfig(rate_per_minute=60, burst=30)) as hub:
        assert hub.store is not None
        ctx = hub.tls(*await hub.node_creds("node-1"))
        node = await hub.storage.nodes.get("node-1")
        assert node is not None
        events = _events(50)
        async with agent_tunnel(hub, ctx) as tunnel:
            channel = await tunnel.open_channel("audit", {}, timeout=5)
            channel.write(encode_message(batch_message(events)))
            for _ in range(10):  # ignore the retry-after: send everything again at once
                channel.write(encode_message(batch_message(events)))
            first, *replies = await _replies(channel)
            assert first.ids == [e.id for e in events[:30]]
            assert first.retry_after is not None and 15 <= first.retry_after <= 30
            assert len(replies) == 2  # the third early batch closes the channel
            assert all(r.ids == [] and r.code == REFUSED_QUOTA for r in replies)
            with pytest.raises(ChannelOpenError) as refused:  # no new channel until it is over
                await tunnel.open_channel("audit", {}, timeout=5)
            assert refused.value.code == OpenFailure.RESOURCE_SHORTAGE
        assert await hub.store.count(node.id) == 30 + 1  # + the hub's join event
        await ping(hub)
    lines = [r.getMessage() for r in caplog.records if r.name == "remoteler.hub.audit"]
    assert sum("quota reached" in m for m in lines) == 1  # once per channel, not per batch
    assert sum("ignores its quota" in m for m in lines) == 1


@pytest.mark.parametrize("blob", [bytes(1 << 20), "\U0001f600" * (1 << 18)])
async def test_huge_events_spend_the_quota_by_size(tmp_path: Path, blob: bytes | str) -> None:
    """Events of 1 MiB each cost 8 tokens (one per started 128 KiB): a burst of 20
    stores two of them, not all three (the quota is not only a count of events).
    Their encoded size counts, not characters: 2**18 emoji are 1 MiB of UTF-8."""
    async with audit_hub(tmp_path, QuotaConfig(rate_per_minute=60, burst=20)) as hub:
        assert hub.store is not None
        ctx = hub.tls(*await hub.node_creds("node-1"))
        node = await hub.storage.nodes.get("node-1")
        assert node is not None
        events = [dataclasses.replace(e, fields={**e.fields, "blob": blob}) for e in _events(3)]
        async with agent_tunnel(hub, ctx) as tunnel:
            channel = await tunnel.open_channel("audit", {}, timeout=5)
            channel.write(encode_message(batch_message(events)))
            await channel.drain()
            reader = MessageReader()
            while not (messages := reader.feed(await asyncio.wait_for(channel.read(65536), 5))):
                pass
            (reply,) = [parse_reply(m) for m in messages]
            assert reply.ids == [e.id for e in events[:2]]
            assert reply.retry_after is not None and reply.retry_after >= 4
        assert await hub.store.count(node.id) == 2 + 1  # + the hub's join event


async def test_agent_reopens_the_channel_after_a_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's insert fails once (disk full, a locked database): it closes the audit
    channel without an ack. The real forwarder opens another on the same tunnel and
    delivers; before, its outbox waited for the next tunnel."""
    monkeypatch.setattr(forwarder, "REOPEN_FIRST", 0.1, raising=False)
    async with audit_hub(tmp_path) as hub:
        store = hub.store
        assert store is not None
        ctx = hub.tls(*await hub.node_creds("node-1"))
        node = await hub.storage.nodes.get("node-1")
        assert node is not None
        real_insert, failed = store.insert_checked, []

        async def insert_failing_once(node_id: str, events: list[AuditEvent]) -> Inserted:
            if not failed:
                failed.append(1)
                raise sqlite3.OperationalError("database or disk is full")
            return await real_insert(node_id, events)

        monkeypatch.setattr(store, "insert_checked", insert_failing_once)
        box = await Outbox.open(tmp_path / "outbox.db", node=node.id)
        try:
            event = await box.append(
                make_event(EventType.EXEC, node=node.id, command="c", exit_code=0)
            )
            async with agent_tunnel(hub, ctx) as tunnel:
                task = asyncio.ensure_future(forwarder.run_forwarder(box, tunnel))
                async with asyncio.timeout(10):
                    while (await box.depth())[0]:
                        await asyncio.sleep(0.05)
                assert failed and not task.done() and not tunnel.closed.is_set()
                await tunnel.close()
                await asyncio.wait_for(task, 5)
        finally:
            await box.close()
        assert [e.id for e in await store.search(AuditQuery(node=node.id, type="exec"))] == [
            event.id
        ]


@pytest.mark.parametrize("old_agent", [False, True])
async def test_agent_over_quota_delivers_everything_exactly_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    old_agent: bool,
) -> None:
    """The real forwarder and outbox against the real hub with a small quota: the excess
    waits in the outbox and arrives after the retry-after, each event once. An agent from
    before refusals (it only knows ``ack``: refusals are ignored, and it sends again
    after its ack timeout) loses nothing either."""
    caplog.set_level(logging.DEBUG, "remoteler.hub.audit")
    if old_agent:
        monkeypatch.setattr(forwarder, "parse_reply", lambda msg: Reply(parse_ack(msg)))
    async with audit_hub(tmp_path, QuotaConfig(rate_per_minute=1200, burst=40)) as hub:
        assert hub.store is not None
        ctx = hub.tls(*await hub.node_creds("node-1"))
        node = await hub.storage.nodes.get("node-1")
        assert node is not None
        box = await Outbox.open(tmp_path / "outbox.db", node=node.id)
        try:
            appended = [
                await box.append(
                    make_event(EventType.EXEC, node=node.id, command=f"c{i}", exit_code=0)
                )
                for i in range(100)
            ]
            async with agent_tunnel(hub, ctx) as tunnel:
                task = asyncio.ensure_future(
                    # the current agent waits for the retry-after, not for an ack timeout
                    forwarder.run_forwarder(
                        box, tunnel, max_count=50, ack_timeout=1.0 if old_agent else 60
                    )
                )
                async with asyncio.timeout(20):
                    while (held := (await box.depth())[0]) == 100:
                        await asyncio.sleep(0.01)
                    assert held == 60  # the first batch of 50 was stored, 10 of the second
                    assert 40 + 1 <= await hub.store.count(node.id) < 100 + 1  # + join event
                    while (await box.depth())[0]:
                        await asyncio.sleep(0.05)
                await tunnel.close()
                await asyncio.wait_for(task, 5)
        finally:
            await box.close()
        stored = await hub.store.search(AuditQuery(node=node.id, type="exec"))
        assert sorted(e.id for e in stored) == sorted(e.id for e in appended)
    closed = [r for r in caplog.records if r.getMessage() == "audit channel closed"]
    early = sum(getattr(r, "early", 0) for r in closed)
    assert len(closed) == 1 and getattr(closed[0], "stored", 0) == 100
    # The current agent never sends before its retry-after; the old one did after a
    # partial ack (refused unread, then re-sent after its ack timeout: nothing lost).
    assert early >= 1 if old_agent else early == 0


async def _reply_to(channel: Channel, reader: MessageReader, events: list[AuditEvent]) -> Reply:
    channel.write(encode_message(batch_message(events)))
    await channel.drain()
    while not (messages := reader.feed(await asyncio.wait_for(channel.read(65536), 5))):
        pass
    (reply,) = [parse_reply(m) for m in messages]
    return reply


async def test_a_reused_seq_is_refused_unacked_and_audited_once(
    ahub: AuditHub, caplog: pytest.LogCaptureFixture
) -> None:
    """A device that lost its outbox numbers from 1 again (an agent without the
    high-water mark): the hub stores none of its events whose seq it already holds
    under another id, leaves them unacked (so the device keeps them) with a retry-after,
    and logs and records ``audit.seq_reused`` once per channel."""
    assert ahub.store is not None
    caplog.set_level(logging.WARNING, "remoteler.hub.audit")
    ctx = ahub.tls(*await ahub.node_creds("node-1"))
    node = await ahub.storage.nodes.get("node-1")
    assert node is not None
    first, again = _events(3), _events(4)  # again: new ids, seq 1-4
    async with agent_tunnel(ahub, ctx) as tunnel:
        channel = await tunnel.open_channel("audit", {}, timeout=5)
        reader = MessageReader()
        assert (await _reply_to(channel, reader, first)).ids == [e.id for e in first]
        for _ in range(2):  # the device re-sends after the retry-after: refused again
            reply = await _reply_to(channel, reader, again)
            assert reply.ids == [again[3].id]
            assert reply.retry_after == audit_ingest.REUSED_SEQ_RETRY
            # named, with where to renumber them from (past the node's highest seq)
            assert reply.reused == tuple(e.id for e in again[:3]) and reply.seq_floor == 5
        assert (await _reply_to(channel, reader, first)).ids == [e.id for e in first]  # dedup
    stored = await ahub.store.search(AuditQuery(node=node.id, type="exec"))
    assert [(e.seq, e.id) for e in stored] == [(e.seq, e.id) for e in [*first, again[3]]]
    (note,) = await ahub.store.search(AuditQuery(node=node.id, type="audit.seq_reused"))
    assert note.fields["seq"] == 1 and note.fields["refused"] == 3
    assert (note.fields["refused_id"], note.fields["stored_id"]) == (again[0].id, first[0].id)
    warned = [r for r in caplog.records if "seq already stored" in r.getMessage()]
    assert len(warned) == 1 and getattr(warned[0], "node_id", None) == node.id


async def test_a_device_that_lost_its_numbering_delivers_everything_renumbered(
    tmp_path: Path, ahub: AuditHub
) -> None:
    """The hub holds seq 1-600 of the node; the device lost its outbox and its mark and
    numbered 700 new events from 1 again. The real forwarder renumbers each refused
    batch after the hub's highest seq and delivers all 700 within a few round trips
    (before: refused every 30 s for ever, and once 500 refused events headed the
    outbox, nothing after them was delivered either)."""
    assert ahub.store is not None
    ctx = ahub.tls(*await ahub.node_creds("node-1"))
    node = await ahub.storage.nodes.get("node-1")
    assert node is not None
    assert (await ahub.store.insert_checked(node.id, _events(600, node.id))).inserted == 600
    box = await Outbox.open(tmp_path / "outbox.db", node=node.id)
    try:
        sent = await asyncio.gather(
            *(
                box.append(make_event(EventType.EXEC, node=node.id, command=f"n{i}", exit_code=0))
                for i in range(700)
            )
        )
        assert [e.seq for e in sent] == list(range(1, 701))
        async with agent_tunnel(ahub, ctx) as tunnel:
            task = asyncio.ensure_future(forwarder.run_forwarder(box, tunnel))
            async with asyncio.timeout(20):
                while (await box.depth())[0]:
                    await asyncio.sleep(0.05)
            await tunnel.close()
            await asyncio.wait_for(task, 5)
        next_seq = (await box.append(sent[0])).seq  # numbering goes on past the moved ones
    finally:
        await box.close()
    stored = await ahub.store.search(AuditQuery(node=node.id, limit=10_000))
    mine = {e.id: e for e in stored if e.type == "exec" and e.fields["command"][0] == "n"}
    assert set(mine) == {e.id for e in sent}  # every event, once
    seqs = [e.seq for e in stored if e.seq > 0]
    assert (
        len(seqs)
        == len(set(seqs))
        == 600 + 700 + len(gaps := [e for e in stored if e.type == "audit.gap"])
    )
    assert gaps and all(g.fields["reason"] == "seq_reused" for g in gaps)
    assert sum(g.fields["renumbered"] for g in gaps) == 600  # n0-n599 clashed, n600+ did not
    assert min(g.fields["resumed_at"] for g in gaps) == 701  # past the hub's 600 and its own
    assert next_seq > max(seqs)


async def test_a_hub_that_refuses_renumbered_events_again_is_not_spun_on(
    tmp_path: Path, ahub: AuditHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hub whose ``seq_floor`` is wrong refuses the renumbered events again: the agent
    renumbers once, then waits the retry-after (before: renumbered and re-sent in a
    tight loop, one more ``audit.gap`` in its outbox per round trip)."""
    assert ahub.store is not None
    ctx = ahub.tls(*await ahub.node_creds("node-1"))
    node = await ahub.storage.nodes.get("node-1")
    assert node is not None
    rounds = []
    real_insert = ahub.store.insert_checked

    async def always_reused(node_id: str, events: list[AuditEvent]) -> Inserted:
        if all(e.seq == 0 for e in events):  # the hub's own audit.seq_reused
            return await real_insert(node_id, events)
        rounds.append(len(events))
        return Inserted(0, tuple(ReusedSeq(e.seq, e.id, "x") for e in events), seq_floor=1)

    monkeypatch.setattr(ahub.store, "insert_checked", always_reused)
    box = await Outbox.open(tmp_path / "outbox.db", node=node.id)
    try:
        await box.append(make_event(EventType.EXEC, node=node.id, command="c", exit_code=0))
        async with agent_tunnel(ahub, ctx) as tunnel:
            task = asyncio.ensure_future(forwarder.run_forwarder(box, tunnel))
            async with asyncio.timeout(10):
                while len(rounds) < 2:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # a spinning agent sends hundreds of rounds meanwhile
            await tunnel.close()
            await asyncio.wait_for(task, 5)
        assert len(rounds) == 2  # the event; then it, renumbered, with one audit.gap
        assert (await box.depth())[0] == 2
    finally:
        await box.close()
