"""The hub's hub-list pusher (hub/api/hublist.py) over real tunnels on 127.0.0.1: agents
that take the list, an old agent that refuses the kind, one that never answers."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from edge_agent.hubchannel import serve_hubs_channel
from hub.api.hublist import REFUSED, HubListPusher
from hub.api.tunnels import LiveNode
from remoteler.hublist import HubList
from remoteler.protocol import HUBS_KIND
from remoteler.wire.aio import ChannelRequest, Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits

FIRST = HubList.build("hub-a", [("hub-a", "a:3080"), ("hub-b", "b:3080")], 2)
SECOND = HubList.build("hub-a", [("hub-a", "a:3080")], 2)


@dataclass
class Agent:
    """One agent's end of a tunnel: what it does with a ``hubs`` channel."""

    mode: str = "take"  # take | refuse (an agent older than the kind) | mute
    received: list[HubList] = field(default_factory=list)
    opened: int = 0
    open_now: int = 0
    #: [open now, most ever] over every agent sharing it
    shared: list[int] = field(default_factory=lambda: [0, 0])

    async def on_channel(self, request: ChannelRequest) -> None:
        assert request.kind == HUBS_KIND
        self.opened += 1
        if self.mode == "refuse":
            request.reject(OpenFailure.UNKNOWN_KIND, "unknown channel kind")
            return
        channel = request.accept()
        self.open_now += 1
        self.shared[0] += 1
        self.shared[1] = max(self.shared[1], self.shared[0])
        try:
            if self.mode == "mute":
                await channel.wait_closed()  # reads nothing, answers nothing
                return
            await serve_hubs_channel(channel, self.received.append)
        finally:
            self.open_now -= 1
            self.shared[0] -= 1


@dataclass
class Hub:
    nodes: list[LiveNode] = field(default_factory=list)
    arrived: asyncio.Queue[Tunnel] = field(default_factory=asyncio.Queue)


@asynccontextmanager
async def hub_side() -> AsyncIterator[tuple[Hub, int]]:
    hub = Hub()

    async def handler(ws: ServerConnection) -> None:
        tunnel = Tunnel(ws, Connection(Role.LISTENER, Limits()))
        hub.arrived.put_nowait(tunnel)
        await tunnel.run()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        yield hub, server.sockets[0].getsockname()[1]


@asynccontextmanager
async def agent_tunnel(hub: Hub, port: int, agent: Agent) -> AsyncIterator[Tunnel]:
    """Dial; the hub's end becomes a live node of ``hub``; yields the agent's end."""
    async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
        tunnel = Tunnel(ws, Connection(Role.DIALER, Limits()), on_channel=agent.on_channel)
        task = asyncio.create_task(tunnel.run())
        hub_end = await asyncio.wait_for(hub.arrived.get(), 5)
        now = time.time()
        hub.nodes.append(LiveNode(f"node-{len(hub.nodes)}", hub_end, now, now))
        try:
            yield tunnel
        finally:
            await tunnel.close()
            await asyncio.wait_for(task, 5)


async def eventually(what: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not what():
            await asyncio.sleep(0.01)


@asynccontextmanager
async def running(pusher: HubListPusher) -> AsyncIterator[HubListPusher]:
    task = asyncio.create_task(pusher.run())
    try:
        yield pusher
    finally:
        await pusher.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_every_agent_gets_the_list_once_and_again_when_it_changes() -> None:
    current: list[HubList | None] = [None]
    agents = [Agent() for _ in range(3)]
    async with AsyncExitStack() as stack:
        hub, port = await stack.enter_async_context(hub_side())
        for agent in agents:
            await stack.enter_async_context(agent_tunnel(hub, port, agent))
        pusher = HubListPusher(lambda: hub.nodes, lambda: current[0], interval=0.05)
        await stack.enter_async_context(running(pusher))
        await asyncio.sleep(0.2)
        assert all(a.opened == 0 for a in agents)  # nothing to push yet
        current[0] = FIRST
        pusher.poke()
        await eventually(lambda: all(a.received == [FIRST] for a in agents))
        await eventually(lambda: all(pusher.pushed(n.tunnel) == FIRST.digest() for n in hub.nodes))
        await asyncio.sleep(0.3)  # several sweeps: nothing pushed twice
        assert [a.opened for a in agents] == [1, 1, 1]
        current[0] = SECOND
        pusher.poke()
        await eventually(lambda: all(a.received == [FIRST, SECOND] for a in agents))


async def test_poke_pushes_at_once_without_waiting_for_the_sweep() -> None:
    current: list[HubList | None] = [FIRST]
    agent = Agent()
    async with hub_side() as (hub, port), agent_tunnel(hub, port, agent):
        pusher = HubListPusher(lambda: hub.nodes, lambda: current[0], interval=3600)
        async with running(pusher):
            await eventually(lambda: agent.received == [FIRST])  # the first sweep
            current[0] = SECOND
            pusher.poke()
            await eventually(lambda: agent.received == [FIRST, SECOND], timeout=5)


async def test_an_old_agent_refuses_the_kind_and_is_left_alone() -> None:
    old, new = Agent(mode="refuse"), Agent()
    async with AsyncExitStack() as stack:
        hub, port = await stack.enter_async_context(hub_side())
        await stack.enter_async_context(agent_tunnel(hub, port, old))
        await stack.enter_async_context(agent_tunnel(hub, port, new))
        current: list[HubList | None] = [FIRST]
        pusher = HubListPusher(lambda: hub.nodes, lambda: current[0], interval=0.05, retry=0.1)
        await stack.enter_async_context(running(pusher))
        await eventually(lambda: pusher.pushed(hub.nodes[0].tunnel) == REFUSED)
        current[0] = SECOND  # not even a new list is offered to it
        pusher.poke()
        await eventually(lambda: new.received == [FIRST, SECOND])
        await asyncio.sleep(0.3)
        assert old.opened == 1


async def test_a_failed_push_is_retried_after_the_retry_delay() -> None:
    agent = Agent(mode="mute")
    async with hub_side() as (hub, port), agent_tunnel(hub, port, agent):
        pusher = HubListPusher(
            lambda: hub.nodes, lambda: FIRST, interval=0.05, retry=0.5, timeout=0.2
        )
        async with running(pusher):
            await eventually(lambda: agent.opened == 1)
            await eventually(lambda: pusher.pushed(hub.nodes[0].tunnel) == "")  # timed out
            failed_at = time.monotonic()
            agent.mode = "take"
            await eventually(lambda: agent.received == [FIRST])
            assert time.monotonic() - failed_at >= 0.4  # not before the retry delay
            assert agent.opened == 2


async def test_pushes_in_flight_are_capped() -> None:
    shared = [0, 0]
    agents = [Agent(mode="mute", shared=shared) for _ in range(8)]
    async with AsyncExitStack() as stack:
        hub, port = await stack.enter_async_context(hub_side())
        for agent in agents:
            await stack.enter_async_context(agent_tunnel(hub, port, agent))
        pusher = HubListPusher(
            lambda: hub.nodes, lambda: FIRST, interval=0.02, timeout=0.3, max_pushes=3
        )
        await stack.enter_async_context(running(pusher))
        await eventually(lambda: all(a.opened for a in agents))
        assert shared[1] == 3  # three at a time, never more


async def test_closed_tunnels_are_skipped_and_forgotten() -> None:
    agent = Agent()
    async with hub_side() as (hub, port):
        pusher = HubListPusher(lambda: hub.nodes, lambda: FIRST, interval=0.05)
        async with running(pusher):
            async with agent_tunnel(hub, port, agent):
                await eventually(lambda: agent.received == [FIRST])
            assert len(pusher._pushed) == 1
            pusher.push_due()  # a closed tunnel still listed: nothing is opened on it
            assert agent.opened == 1
            hub.nodes.clear()
            await asyncio.sleep(0.1)
            gc.collect()
            assert len(pusher._pushed) == 0


async def test_an_idle_sweep_is_skipped_while_nothing_changed() -> None:
    agent = Agent()
    generation = [1]
    calls = [0]

    def live() -> list[LiveNode]:
        calls[0] += 1
        return hub.nodes

    async with hub_side() as (hub, port), agent_tunnel(hub, port, agent):
        pusher = HubListPusher(live, lambda: FIRST, generation=lambda: generation[0])
        pusher.push_due()
        await eventually(lambda: agent.received == [FIRST])

        def settled() -> bool:
            # the hub's end of that push may still be finishing (under load): sweep
            # until a sweep finds the tunnel up to date, so the next one looks at nothing
            before = calls[0]
            pusher.push_due()
            pusher.push_due()
            return calls[0] - before <= 1

        await eventually(settled)
        swept = calls[0]
        for _ in range(5):
            pusher.push_due()
        assert calls[0] == swept  # nothing changed since: not even a look
        generation[0] += 1  # a tunnel came or went
        pusher.push_due()
        assert calls[0] == swept + 1
        await pusher.close()
