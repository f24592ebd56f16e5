"""A real EdgeAgent against small in-test hubs of one cluster (docs/edge-agent.md,
"Several hubs"): mTLS websockets on 127.0.0.1 speaking the real tunnel protocol,
each pushing the cluster's hub list on a ``hubs`` channel and storing audit
batches in one shared dict (the cluster's database, idempotent on the event id)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from faultproxy import FaultProxy
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from edge_agent.agent import Backoff, EdgeAgent
from edge_agent.identity import NodeIdentity
from edge_agent.outbox import Outbox
from remoteler.audit.events import AuditEvent, EventType, make_event
from remoteler.audit.stream import MessageReader, ack_message, encode_message, parse_batch
from remoteler.ca import CertAuthority, generate_private_key
from remoteler.hubconn import ERROR_HEADER
from remoteler.hublist import HubList
from remoteler.protocol import AUDIT_KIND, HUBS_KIND, SSH_KIND, TUNNEL_SUBPROTOCOL
from remoteler.tlsutil import server_context
from remoteler.wire.aio import Channel, ChannelRequest, Tunnel
from remoteler.wire.codes import ErrorCode, OpenFailure
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits

NODE = "00000000-0000-4000-8000-0000000000a7"


@dataclass
class Cluster:
    """What the hubs share: their CA, the stored audit events, who forwards now."""

    host_ca: CertAuthority = field(default_factory=lambda: CertAuthority.generate("host", "t"))
    hubs: dict[str, MiniHub] = field(default_factory=dict)
    stored: dict[str, AuditEvent] = field(default_factory=dict)
    received: Counter[str] = field(default_factory=Counter)
    #: audit channels open now, over every hub, and the most ever open at once
    audit_open: int = 0
    audit_most: int = 0
    connections: int = 2
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def hub_list(self, sender: str) -> HubList:
        live = [(h.hub_id, h.addr) for h in self.hubs.values() if h.listed]
        return HubList.build(sender, live, self.connections)

    def holding(self) -> dict[str, int]:
        """Hub id -> tunnels of the agent it holds now (only hubs holding any)."""
        return {h.hub_id: len(h.tunnels) for h in self.hubs.values() if h.tunnels}


@dataclass
class MiniHub:
    cluster: Cluster
    hub_id: str
    addr: str = ""
    listed: bool = True
    server: Server | None = None
    tunnels: list[Tunnel] = field(default_factory=list)
    #: audit channels ever opened on this hub
    audit_channels: int = 0
    #: refuse the audit channel (an older hub, a node cut off by this hub's quota)
    refuse_audit: bool = False
    audit_refusals: int = 0
    #: tunnels still to refuse with 409 "dial another hub" (hub/api/server.py, Duplicate)
    hold: int = 0
    held: int = 0
    #: run on each new tunnel before the hub list is pushed on it
    before_push: Callable[[Tunnel], Awaitable[None]] | None = None

    async def start(self) -> None:
        ca = self.cluster.host_ca
        key = generate_private_key()
        cert = ca.issue_x509(
            key.public_key(),
            common_name="remoteler-hub",
            usage="server",
            ip_addresses=["127.0.0.1"],
            ttl_seconds=3600,
        )
        key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        ctx = server_context(cert, key_pem, [ca.x509_pem])
        self.server = await serve(
            self.handler,
            "127.0.0.1",
            0,
            ssl=ctx,
            compression=None,
            process_request=self.process_request,
            subprotocols=[TUNNEL_SUBPROTOCOL],  # type: ignore[list-item]
        )
        self.addr = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def process_request(self, connection: ServerConnection, _request: Request) -> Response | None:
        if self.hold <= 0:
            return None
        self.hold -= 1
        self.held += 1
        self.cluster.changed.set()
        response = connection.respond(
            HTTPStatus.CONFLICT,
            "this node already has a tunnel to this hub that carries sessions; "
            "dial another hub of the cluster\n",
        )
        response.headers[ERROR_HEADER] = "tunnel_held"
        return response

    async def handler(self, ws: ServerConnection) -> None:
        core = Connection(Role.LISTENER, Limits(heartbeat_interval=0), now=time.monotonic())
        core.pong_clock = time.time
        tunnel = Tunnel(ws, core, on_channel=self.on_channel)
        self.tunnels.append(tunnel)
        self.cluster.changed.set()
        push = asyncio.ensure_future(self.push(tunnel))
        try:
            await tunnel.run()
        finally:
            push.cancel()
            self.tunnels.remove(tunnel)
            self.cluster.changed.set()

    async def push(self, tunnel: Tunnel) -> None:
        """Push the hub list, as hub/api/hublist.py does, and again when it changes."""
        pushed = ""
        if self.before_push is not None:
            await self.before_push(tunnel)
        while not tunnel.closed.is_set():
            hubs = self.cluster.hub_list(self.hub_id)
            if hubs.digest() != pushed:
                channel = await tunnel.open_channel(HUBS_KIND, {"digest": hubs.digest()})
                channel.write(hubs.encode())
                channel.write_eof()
                reply = b""
                while data := await channel.read():
                    reply += data
                channel.close()
                assert reply == b"ok"
                pushed = hubs.digest()
            await asyncio.sleep(0.05)

    async def on_channel(self, request: ChannelRequest) -> None:
        if request.kind != AUDIT_KIND:
            request.reject(OpenFailure.UNKNOWN_KIND, "no such channel")
            return
        if self.refuse_audit:
            self.audit_refusals += 1
            self.cluster.changed.set()
            request.reject(OpenFailure.UNKNOWN_KIND, "no audit here")
            return
        cluster = self.cluster
        channel = request.accept()
        self.audit_channels += 1
        cluster.audit_open += 1
        cluster.audit_most = max(cluster.audit_most, cluster.audit_open)
        try:
            reader = MessageReader()
            while data := await channel.read():
                for message in reader.feed(data):
                    events = parse_batch(message)
                    for event in events:
                        cluster.received[event.id] += 1
                        cluster.stored.setdefault(event.id, event)  # idempotent insert
                    cluster.changed.set()
                    channel.write(encode_message(ack_message([e.id for e in events])))
        finally:
            cluster.audit_open -= 1

    async def unreachable(self) -> None:
        """Stop answering at this address and drop every tunnel, but stay listed (a
        hub that died, until its lease runs out of the list)."""
        assert self.server is not None
        self.server.close(close_connections=False)
        await asyncio.gather(*(t.close(ErrorCode.GOING_AWAY, "gone") for t in list(self.tunnels)))
        await self.server.wait_closed()

    async def stop(self, *, retry_after: float | None = None) -> None:
        """Close every tunnel (a GOAWAY, with ``retry_after`` as a draining hub's) and
        stop listening: nothing answers at this address any more."""
        self.listed = False
        assert self.server is not None
        if not self.server.is_serving():
            return
        self.server.close(close_connections=False)
        await asyncio.gather(
            *(
                t.close(ErrorCode.GOING_AWAY, "hub stopping", retry_after=retry_after)
                for t in list(self.tunnels)
            )
        )
        await self.server.wait_closed()


async def until(cluster: Cluster, what: Callable[[], bool], timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not what():
            cluster.changed.clear()
            with contextlib.suppress(TimeoutError):  # wake on a change, or look again
                await asyncio.wait_for(cluster.changed.wait(), 0.05)


def identity(cluster: Cluster, bootstrap: str) -> NodeIdentity:
    ca = cluster.host_ca
    key = generate_private_key()
    return NodeIdentity(
        key=key,
        node_id=NODE,
        name="truck-042",
        hub=bootstrap,
        ssh_cert="",
        tls_cert=ca.issue_x509(
            key.public_key(), common_name=NODE, usage="client", ttl_seconds=3600
        ),
        host_ca_pem=ca.x509_pem,
        user_ca_ssh="",
        cluster="test",
    )


@asynccontextmanager
async def cluster_of(ids: list[str]) -> AsyncIterator[Cluster]:
    cluster = Cluster()
    for hub_id in ids:
        cluster.hubs[hub_id] = MiniHub(cluster, hub_id)
        await cluster.hubs[hub_id].start()
    try:
        yield cluster
    finally:
        for hub in cluster.hubs.values():
            if hub.listed:
                await hub.stop()


@asynccontextmanager
async def running_agent(
    cluster: Cluster, bootstrap: str, outbox: Outbox
) -> AsyncIterator[EdgeAgent]:
    agent = EdgeAgent(
        identity(cluster, bootstrap),
        {},
        limits=Limits(send_heartbeats=True, heartbeat_interval=5, allowed_misses=2),
        backoff=Backoff(base=0.2, cap=1.0),
        outbox=outbox,
    )
    agent.slots.extra_slot_jitter = 0.2
    task = asyncio.ensure_future(agent.run_forever())
    try:
        yield agent
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await agent.audit.flush()


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "outbox.db", node=NODE)
    try:
        yield box
    finally:
        await box.close()


def exec_event(i: int) -> AuditEvent:
    return make_event(EventType.EXEC, node=NODE, command=f"cmd {i}", exit_code=0)


async def test_one_tunnel_to_each_hub_and_audit_over_one_only(outbox: Outbox) -> None:
    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(cluster_of(["hub-a", "hub-b"]))
        a, b = cluster.hubs["hub-a"], cluster.hubs["hub-b"]
        agent = await stack.enter_async_context(running_agent(cluster, a.addr, outbox))
        await until(cluster, lambda: cluster.holding() == {"hub-a": 1, "hub-b": 1})
        await until(cluster, lambda: {agent.hubset.hub_of(s) for s in (0, 1)} == set(cluster.hubs))
        appended = [await outbox.append(exec_event(i)) for i in range(50)]
        await until(cluster, lambda: set(cluster.stored) >= {e.id for e in appended})
        # both tunnels up all along, one of them forwarded: the other never opened audit
        assert sorted([a.audit_channels, b.audit_channels]) == [0, 1]
        assert cluster.audit_most == 1
        # tunnel.connect names the address dialled and the hub, once its list said
        await agent.audit.flush()
        await until(cluster, lambda: len(connects(cluster)) == 2)
        assert {(e.fields["hub"], e.fields["hub_id"]) for e in connects(cluster)} == {
            (a.addr, "hub-a"),
            (b.addr, "hub-b"),
        }


def connects(cluster: Cluster) -> list[AuditEvent]:
    return [e for e in cluster.stored.values() if e.type == "tunnel.connect"]


async def test_a_hub_that_goes_away_is_replaced_by_a_free_one(outbox: Outbox) -> None:
    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(cluster_of(["hub-a", "hub-b", "hub-c"]))
        bootstrap = cluster.hubs["hub-a"].addr
        agent = await stack.enter_async_context(running_agent(cluster, bootstrap, outbox))
        await until(cluster, lambda: sum(cluster.holding().values()) == 2)
        assert all(n == 1 for n in cluster.holding().values())
        await until(
            cluster, lambda: {agent.hubset.hub_of(s) for s in (0, 1)} >= set(cluster.holding())
        )
        await until(cluster, lambda: agent.forwarding is not None)
        forwarding = agent.forwarding
        gone = next(h for h in cluster.hubs.values() if forwarding in _agent_ends(agent, h))
        appended = [await outbox.append(exec_event(i)) for i in range(20)]
        await until(cluster, lambda: set(cluster.stored) >= {e.id for e in appended})
        await gone.stop()  # no retry-after: the link broke, the hub died
        expected = sorted(set(cluster.hubs) - {gone.hub_id})
        await until(cluster, lambda: sorted(cluster.holding()) == expected)
        assert all(n == 1 for n in cluster.holding().values())
        # audit moved to a tunnel that is up, and still one at a time
        later = [await outbox.append(exec_event(100 + i)) for i in range(20)]
        await until(cluster, lambda: set(cluster.stored) >= {e.id for e in later})
        assert cluster.audit_most == 1
        assert agent.forwarding is not None and agent.forwarding is not forwarding


def _agent_ends(agent: EdgeAgent, hub: MiniHub) -> list[Tunnel]:
    """The agent's tunnels that are on ``hub``."""
    return [
        run.tunnel
        for slot, run in agent.runs.items()
        if run.tunnel is not None and agent.hubset.hub_of(slot) == hub.hub_id
    ]


async def test_a_draining_hub_sends_its_agents_to_a_free_hub_at_once(outbox: Outbox) -> None:
    """GOAWAY with retry_after 60 from a draining hub: with another listed hub free the
    agent goes there within about a second, not after 60 s."""
    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(cluster_of(["hub-a", "hub-b"]))
        cluster.connections = 1
        a = cluster.hubs["hub-a"]
        await stack.enter_async_context(running_agent(cluster, a.addr, outbox))
        await until(cluster, lambda: cluster.holding() == {"hub-a": 1})
        await asyncio.sleep(0.3)  # the list arrived: hub-b is known
        started = time.monotonic()
        a.server.close(close_connections=False)  # type: ignore[union-attr]
        await asyncio.gather(
            *(
                t.close(ErrorCode.GOING_AWAY, "hub restarting", retry_after=60)
                for t in list(a.tunnels)
            )
        )
        await until(cluster, lambda: cluster.holding() == {"hub-b": 1}, timeout=10)
        assert time.monotonic() - started < 5
        a.listed = False


async def test_with_a_single_hub_the_retry_after_is_obeyed(outbox: Outbox) -> None:
    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(cluster_of(["hub-a"]))
        a = cluster.hubs["hub-a"]
        agent = await stack.enter_async_context(running_agent(cluster, a.addr, outbox))
        await until(cluster, lambda: cluster.holding() == {"hub-a": 1})
        await asyncio.sleep(0.3)
        assert agent.hubset.wanted() == 1  # two asked for, one hub: one tunnel
        started = time.monotonic()
        await asyncio.gather(
            *(t.close(ErrorCode.GOING_AWAY, "hub restarting", retry_after=2) for t in a.tunnels)
        )
        await until(cluster, lambda: cluster.holding() == {"hub-a": 1}, timeout=10)
        assert time.monotonic() - started >= 2  # nowhere else to go: it waited


async def test_fewer_tunnels_when_the_list_asks_for_fewer(outbox: Outbox) -> None:
    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(cluster_of(["hub-a", "hub-b"]))
        a = cluster.hubs["hub-a"]
        agent = await stack.enter_async_context(running_agent(cluster, a.addr, outbox))
        await until(cluster, lambda: sum(cluster.holding().values()) == 2)
        cluster.connections = 1  # the hubs push the new list within 50 ms
        await until(cluster, lambda: sum(cluster.holding().values()) == 1)
        await asyncio.sleep(0.5)
        assert sum(cluster.holding().values()) == 1 and list(agent.tunnels) == [0]
        # the stopped tunnel said goodbye and is on record
        await until(cluster, lambda: "the hub list asks for fewer tunnels" in reasons(cluster))


def reasons(cluster: Cluster) -> list[str]:
    """The reasons of the tunnel.disconnect events stored."""
    return [e.fields["reason"] for e in cluster.stored.values() if e.type == "tunnel.disconnect"]


async def test_a_stopping_agent_says_goodbye_on_every_tunnel(outbox: Outbox) -> None:
    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(cluster_of(["hub-a", "hub-b"]))
        a = cluster.hubs["hub-a"]
        async with running_agent(cluster, a.addr, outbox) as agent:
            await until(cluster, lambda: sum(cluster.holding().values()) == 2)
            ends = list(agent.tunnels.values())
        assert all(t.closed.is_set() and t.close_code is ErrorCode.NORMAL for t in ends)
        await until(cluster, lambda: not cluster.holding())
        events = []
        while batch := await outbox.batch(100, 1 << 20):
            events += batch
            await outbox.ack([e.id for e in batch])
        stopped = [e for e in events if e.type == "tunnel.disconnect"]
        assert [e.fields["reason"] for e in stopped] == ["agent stopping"] * 2


async def test_a_hub_that_refuses_the_audit_channel_is_left_for_another_tunnel(
    outbox: Outbox,
) -> None:
    """The forwarder does not keep reopening on a hub that refuses audit while
    another tunnel is up: it moves there, and everything is stored once."""
    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(cluster_of(["hub-a", "hub-b"]))
        a, b = cluster.hubs["hub-a"], cluster.hubs["hub-b"]
        a.refuse_audit = True
        appended = [await outbox.append(exec_event(i)) for i in range(30)]
        # slot 0 comes up first on hub-a (the bootstrap): the longest up, tried first
        agent = await stack.enter_async_context(running_agent(cluster, a.addr, outbox))
        await until(cluster, lambda: a.audit_refusals >= 1)
        await until(cluster, lambda: set(cluster.stored) >= {e.id for e in appended}, 15)
        assert b.audit_channels >= 1 and a.audit_channels == 0
        assert agent.forwarding is not None and agent.forwarding in _agent_ends(agent, b)
        refusals = a.audit_refusals
        later = [await outbox.append(exec_event(100 + i)) for i in range(10)]
        await until(cluster, lambda: set(cluster.stored) >= {e.id for e in later})
        assert a.audit_refusals == refusals  # not tried again while hub-b forwards


async def test_no_dial_through_the_balancer_while_another_tunnel_is_up(outbox: Outbox) -> None:
    """A listed hub that cannot be reached: the second slot waits for it rather than
    dialling --hub, a balancer that would land it on the hub the first slot holds."""
    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(cluster_of(["hub-a", "hub-b"]))
        a, b = cluster.hubs["hub-a"], cluster.hubs["hub-b"]
        port = int(a.addr.rpartition(":")[2])
        balancer = await stack.enter_async_context(FaultProxy("127.0.0.1", port))
        await b.unreachable()
        agent = await stack.enter_async_context(running_agent(cluster, balancer.addr, outbox))
        await until(cluster, lambda: agent.hubset.hub_of(0) == "hub-a")
        await asyncio.sleep(3)  # slot 1 dialled hub-b, failed, and looked for another
        assert balancer.stats.accepted == 1
        assert cluster.holding() == {"hub-a": 1}


async def test_a_hub_held_by_another_tunnel_is_tried_again_not_failed(
    outbox: Outbox, caplog: pytest.LogCaptureFixture
) -> None:
    """HTTP 409 "dial another hub": the slot tries again later, logged as a held hub
    (not a failure), and is on that hub once it takes the tunnel."""
    caplog.set_level(logging.INFO, logger="remoteler.agent")
    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(cluster_of(["hub-a", "hub-b"]))
        a, b = cluster.hubs["hub-a"], cluster.hubs["hub-b"]
        b.hold = 3
        agent = await stack.enter_async_context(running_agent(cluster, a.addr, outbox))
        agent.slots.held_avoid = 0.2
        await until(cluster, lambda: cluster.holding() == {"hub-a": 1, "hub-b": 1})
        assert b.held == 3
        messages = [r.getMessage() for r in caplog.records]
        assert sum("dial another hub" in m and "trying again later" in m for m in messages) == 3
        assert not any(m.startswith("tunnel failed") for m in messages)


async def test_a_duplicate_tunnel_carrying_a_session_is_kept_until_it_ends(
    outbox: Outbox,
) -> None:
    """Two tunnels on one hub (the list's hub-b address leads to hub-a): the newer
    one is closed to redial elsewhere, but never while a user's session runs on it."""
    async with AsyncExitStack() as stack:
        cluster = await stack.enter_async_context(cluster_of(["hub-a", "hub-b"]))
        a, b = cluster.hubs["hub-a"], cluster.hubs["hub-b"]
        # the device's own sshd (forward mode): keeps each connection until told
        conns: list[asyncio.StreamWriter] = []

        async def sshd(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conns.append(writer)
            await reader.read()

        server = await asyncio.start_server(sshd, "127.0.0.1", 0)
        stack.push_async_callback(server.wait_closed)
        stack.callback(server.close)
        alias = await stack.enter_async_context(
            FaultProxy("127.0.0.1", int(a.addr.rpartition(":")[2]))
        )
        b.addr = alias.addr
        sessions: list[Channel] = []

        async def session_first(tunnel: Tunnel) -> None:
            if len(a.tunnels) >= 2 and not sessions:  # the agent's second tunnel here
                meta = {"user": "alice", "login": "pi", "session_id": "s-1"}
                sessions.append(await tunnel.open_channel(SSH_KIND, meta))

        a.before_push = session_first
        agent = await stack.enter_async_context(running_agent(cluster, a.addr, outbox))
        agent.ssh_target = ("127.0.0.1", server.sockets[0].getsockname()[1])
        await until(cluster, lambda: bool(sessions) and bool(conns))
        busy = next(run for run in agent.runs.values() if run.sessions)
        assert busy.tunnel is not None
        await until(cluster, lambda: agent.hubset.duplicate(busy.slot))  # its list came
        await asyncio.sleep(1.0)
        assert not busy.tunnel.closed.is_set() and not sessions[0].is_closed
        sessions[0].close()  # the session ends: now the idle duplicate goes
        conns[0].close()
        await asyncio.wait_for(busy.tunnel.closed.wait(), 10)
        assert busy.sessions == 0
