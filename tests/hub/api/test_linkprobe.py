"""hub/api/linkprobe.py: when a quiet tunnel is probed, and what a frozen one answers.

Real websockets on 127.0.0.1: the hub side is a LISTENER tunnel; the agent side
answers PINGs unless it stops reading its socket (a link that froze open).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from hub.api.linkprobe import Silent, check_link, not_answering, suspect_after
from remoteler.wire.aio import Tunnel
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits

#: The hub expects a heartbeat every 0.4 s and drops the tunnel after 10 misses.
HUB_LIMITS = Limits(heartbeat_interval=0.4, allowed_misses=10)


@dataclass
class Link:
    hub: Tunnel
    agent_ws: ClientConnection


@asynccontextmanager
async def link() -> AsyncIterator[Link]:
    """A hub tunnel whose agent sends no heartbeats (it only answers PINGs)."""
    tunnels: list[Tunnel] = []
    up = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        tunnel = Tunnel(ws, Connection(Role.LISTENER, HUB_LIMITS))
        tunnels.append(tunnel)
        up.set()
        await tunnel.run()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            agent = Tunnel(ws, Connection(Role.DIALER, Limits(heartbeat_interval=0)))
            task = asyncio.create_task(agent.run())
            await asyncio.wait_for(up.wait(), 5)
            try:
                yield Link(tunnels[0], ws)
            finally:
                ws.transport.abort()
                await asyncio.gather(task, return_exceptions=True)
                for tunnel in tunnels:
                    await asyncio.wait_for(tunnel.close(), 5)


def test_suspect_after() -> None:
    assert suspect_after(30.0, 3) == 60.0  # two intervals when three misses are allowed
    assert suspect_after(15.0, 10) == 30.0
    # The agent's default, 60 s x 2: at two intervals the tunnel is gone already.
    assert suspect_after(60.0, 2) == 60.0
    assert suspect_after(60.0, 1) is None
    assert suspect_after(0.0, 3) is None  # no heartbeats: no expected traffic


async def test_recent_traffic_is_not_probed_even_on_a_frozen_link() -> None:
    async with link() as ln:
        ln.agent_ws.transport.pause_reading()
        started = time.monotonic()
        assert await check_link(ln.hub, timeout=1.0) is None
        assert time.monotonic() - started < 0.5  # no probe: nothing to wait for


async def test_a_quiet_live_link_answers_the_probe() -> None:
    async with link() as ln:
        await asyncio.sleep(0.9)  # over two intervals of silence: suspect
        assert ln.hub.silence > suspect_after(0.4, 10)  # type: ignore[operator]
        started = time.monotonic()
        assert await check_link(ln.hub, timeout=2.0) is None
        assert time.monotonic() - started < 1.0
        assert ln.hub.silence < 0.5  # the answer counts as traffic


async def test_a_frozen_link_is_reported_after_the_probe_deadline() -> None:
    async with link() as ln:
        ln.agent_ws.transport.pause_reading()  # it reads (and answers) nothing more
        await asyncio.sleep(0.9)
        started = time.monotonic()
        silent = await check_link(ln.hub, timeout=0.5, wall=lambda: 1000.0)
        took = time.monotonic() - started
        assert silent is not None
        assert 0.5 <= took < 1.5
        assert 1.3 <= silent.silence < 3.0
        # dropped once silent for 0.4 x 10 s: that much later than now
        assert silent.offline_at == 1000.0 + (4.0 - silent.silence)
        assert not ln.hub.closed.is_set()  # the heartbeat deadline still decides


async def test_probe_of_a_closed_tunnel_is_false_at_once() -> None:
    async with link() as ln:
        await ln.hub.close()
        assert await ln.hub.probe(5.0) is False


def test_message() -> None:
    when = time.mktime((2026, 12, 7, 4, 12, 30, 0, 0, -1))
    line = not_answering("truck-042", Silent(silence=40.4, offline_at=when))
    # The hub's time zone named: the user's terminal may be in another one.
    zone = time.strftime("%Z", time.localtime(when))
    assert zone
    assert line == (
        "truck-042 is not answering (link silent for 40 s); it will be marked offline "
        f"at 04:12:30 {zone}; try again once it reconnects"
    )


async def test_concurrent_probes_of_one_tunnel_share_one_ping() -> None:
    """Many tsh asking at once for a frozen node: one PING on its tunnel, one answer
    for all (not a PING each queued behind the frozen link)."""
    async with link() as ln:
        ln.agent_ws.transport.pause_reading()
        await asyncio.sleep(0.9)
        started = time.monotonic()
        answers = await asyncio.gather(*(check_link(ln.hub, timeout=0.5) for _ in range(50)))
        assert time.monotonic() - started < 1.5  # together, not one after another
        assert all(isinstance(a, Silent) for a in answers)
        assert ln.hub._core._ping_seq == 1  # one PING sent for the fifty


async def test_a_caller_giving_up_does_not_cancel_the_shared_probe() -> None:
    async with link() as ln:
        await asyncio.sleep(0.9)
        first = asyncio.ensure_future(ln.hub.probe(2.0))
        second = asyncio.ensure_future(ln.hub.probe(2.0))
        await asyncio.sleep(0)
        first.cancel()  # that tsh hung up
        assert await asyncio.wait_for(second, 3.0) is True
