"""Interactive latency with bulk and audit transfers on the same tunnel, over a slow link.

The link is in memory: each direction carries ``RATE`` bytes/s, one message at a
time, with no buffer of its own (send() returns once the message is "on the
wire"). Bounds are generous; they only separate "behind a quantum" from
"behind a megabyte batch".
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter

from websockets.exceptions import ConnectionClosedOK

from remoteler.wire.aio import Channel, ChannelRequest, Tunnel
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits

RATE = 1 << 20  # bytes/s: a 256 KiB chunk takes 250 ms, a 16 KiB quantum 16 ms


class SlowLinkEnd:
    """One end of an in-memory websocket link (the WebSocketLike the tunnel needs)."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.peer: SlowLinkEnd = self
        self.closed = False

    async def send(self, message: bytes) -> None:
        if self.closed:
            raise ConnectionClosedOK(None, None)
        await asyncio.sleep(len(message) / self.rate)
        self.peer.inbox.put_nowait(message)

    async def recv(self) -> bytes:
        message = await self.inbox.get()
        if message is None:
            raise ConnectionClosedOK(None, None)
        return message

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if not self.closed:
            self.closed = True
            self.inbox.put_nowait(None)
            self.peer.inbox.put_nowait(None)


def slow_link(rate: float) -> tuple[SlowLinkEnd, SlowLinkEnd]:
    a, b = SlowLinkEnd(rate), SlowLinkEnd(rate)
    a.peer, b.peer = b, a
    return a, b


async def test_keystroke_echo_stays_fast_beside_bulk_and_audit() -> None:
    received: Counter[str] = Counter()

    async def hub_side(request: ChannelRequest) -> None:
        channel = request.accept()
        while data := await channel.read():
            if request.kind == "echo":
                channel.write(data)
            received[request.kind] += len(data)

    agent_ws, hub_ws = slow_link(RATE)
    limits = Limits(heartbeat_interval=0)
    agent = Tunnel(agent_ws, Connection(Role.DIALER, limits))
    hub = Tunnel(hub_ws, Connection(Role.LISTENER, limits), on_channel=hub_side)
    runs = [asyncio.create_task(agent.run()), asyncio.create_task(hub.run())]

    async def flood(channel: Channel) -> None:
        block = b"\0" * 65536
        while True:
            channel.write(block)
            await channel.drain()

    try:
        bulk = await agent.open_channel("bulk", {})  # NORMAL, like an scp session
        audit = await agent.open_channel("audit", {})  # LOW
        tty = await agent.open_channel("echo", {})  # NORMAL, sparse
        floods = [asyncio.create_task(flood(bulk)), asyncio.create_task(flood(audit))]
        await asyncio.sleep(0.3)  # both backlogged, the link saturated
        latencies = []
        for _ in range(10):
            started = time.monotonic()
            tty.write(b"k")
            assert await asyncio.wait_for(tty.read(), 10) == b"k"
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
        for task in floods:
            task.cancel()
        # Behind a 1 MiB batch (the old writer) this was ~0.5 s; now about one
        # quantum each way (~20 ms).
        assert statistics.median(latencies) < 0.2, latencies
        assert received["bulk"] > received["audit"] > 0  # LOW progresses, below NORMAL
    finally:
        await agent_ws.close()  # drop the link: a graceful close would send the backlog
        await asyncio.wait_for(asyncio.gather(*runs), 10)


async def test_keystroke_overtakes_a_lone_bulk_channel_on_a_10_kib_link() -> None:
    """Alone on the tunnel a bulk channel used to send 256 KiB frames: 25 s each at
    10 KiB/s, which nothing written later could overtake. The pacer measures the
    link and cuts frames to ~0.1 s of it."""
    rate = 10 * 1024

    async def hub_side(request: ChannelRequest) -> None:
        channel = request.accept()
        while data := await channel.read():
            if request.kind == "echo":
                channel.write(data)

    agent_ws, hub_ws = slow_link(rate)
    limits = Limits(heartbeat_interval=0)
    agent = Tunnel(agent_ws, Connection(Role.DIALER, limits))
    hub = Tunnel(hub_ws, Connection(Role.LISTENER, limits), on_channel=hub_side)
    runs = [asyncio.create_task(agent.run()), asyncio.create_task(hub.run())]
    try:
        tty = await agent.open_channel("echo", {})
        bulk = await agent.open_channel("bulk", {})
        bulk.write(b"\0" * (1 << 20))  # a 1 MiB download, alone on the tunnel
        await asyncio.sleep(2.5)  # past the first (cautious) frame: the link is measured
        latencies = []
        for _ in range(3):
            started = time.monotonic()
            tty.write(b"k")
            assert await asyncio.wait_for(tty.read(), 30) == b"k"
            latencies.append(time.monotonic() - started)
        assert max(latencies) < 1.0, latencies  # was ~25 s: behind a 256 KiB frame
        assert agent.pacer.budget is not None and agent.pacer.budget < 4096
    finally:
        await agent_ws.close()
        await asyncio.wait_for(asyncio.gather(*runs), 10)
