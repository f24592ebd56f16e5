"""The asyncio adapter over real websockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from remoteler.wire.aio import Channel, ChannelRequest, Tunnel
from remoteler.wire.codes import ErrorCode, OpenFailure
from remoteler.wire.connection import Connection, Role
from remoteler.wire.exceptions import ChannelClosedError, ChannelOpenError, TunnelClosed
from remoteler.wire.limits import Limits

Handler = Callable[[ChannelRequest], Awaitable[None]]


async def echo(channel: Channel) -> None:
    while data := await channel.read(65536):
        channel.write(data)
        await channel.drain()
    channel.write_eof()
    channel.close()


async def on_channel(request: ChannelRequest) -> None:
    if request.kind == "echo":
        await echo(request.accept())
    elif request.kind == "sink":
        channel = request.accept()
        digest, total = hashlib.sha256(), 0
        while data := await channel.read():
            digest.update(data)
            total += len(data)
        channel.write(f"{total} {digest.hexdigest()}".encode())
        channel.close()
    elif request.kind == "silent":
        return  # neither accepted nor rejected: the adapter refuses
    else:
        request.reject(OpenFailure.UNKNOWN_KIND, f"no {request.kind} here")


@dataclass
class Hub:
    tunnels: list[Tunnel] = field(default_factory=list)
    sockets: list[ServerConnection] = field(default_factory=list)
    heartbeats: list[dict[str, Any] | None] = field(default_factory=list)
    port: int = 0


@asynccontextmanager
async def hub_server(limits: Limits | None = None) -> AsyncIterator[Hub]:
    hub = Hub()

    async def handler(ws: ServerConnection) -> None:
        tunnel = Tunnel(
            ws,
            Connection(Role.LISTENER, limits or Limits()),
            on_channel=on_channel,
            on_heartbeat=hub.heartbeats.append,
        )
        hub.tunnels.append(tunnel)
        hub.sockets.append(ws)
        await tunnel.run()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        hub.port = server.sockets[0].getsockname()[1]
        yield hub


@asynccontextmanager
async def agent(
    hub: Hub, limits: Limits | None = None, handler: Handler | None = None
) -> AsyncIterator[Tunnel]:
    async with connect(f"ws://127.0.0.1:{hub.port}", compression=None) as ws:
        tunnel = Tunnel(ws, Connection(Role.DIALER, limits or Limits()), on_channel=handler)
        task = asyncio.create_task(tunnel.run())
        try:
            yield tunnel
        finally:
            await tunnel.close()
            await asyncio.wait_for(task, 5)


async def test_open_and_echo() -> None:
    async with hub_server() as hub, agent(hub) as tunnel:
        channel = await tunnel.open_channel("echo", {"who": "test"})
        assert channel.channel_id == 1 and channel.kind == "echo"
        channel.write(b"hello ")
        channel.write(b"tunnel")
        received = b""
        while len(received) < 12:
            received += await channel.read()
        assert received == b"hello tunnel"
        channel.write_eof()
        assert await channel.read() == b""
        assert channel.at_eof
        await asyncio.wait_for(channel.wait_closed(), 5)
        assert channel.is_closed
        with pytest.raises(ChannelClosedError):
            channel.write(b"late")
        with pytest.raises(ChannelClosedError):
            await channel.drain()


async def test_8mib_transfer_with_flow_control() -> None:
    limits = Limits(initial_window=256 * 1024, max_data_chunk=64 * 1024)
    payload = os.urandom(8 << 20)
    async with hub_server(limits) as hub, agent(hub, limits) as tunnel:
        channel = await tunnel.open_channel("echo", {})

        async def send() -> None:
            view = memoryview(payload)
            for start in range(0, len(payload), 100_000):
                channel.write(view[start : start + 100_000])
                await channel.drain()
            channel.write_eof()

        async def receive() -> bytes:
            parts = []
            while data := await channel.read():
                parts.append(data)
            return b"".join(parts)

        _, echoed = await asyncio.wait_for(asyncio.gather(send(), receive()), 30)
        assert echoed == payload
        await asyncio.wait_for(channel.wait_closed(), 5)


async def test_eof_then_answer() -> None:
    async with hub_server() as hub, agent(hub) as tunnel:
        channel = await tunnel.open_channel("sink", {})
        data = os.urandom(3 << 20)
        channel.write(data)
        channel.write_eof()
        answer = b""
        while chunk := await channel.read():
            answer += chunk
        assert answer == f"{len(data)} {hashlib.sha256(data).hexdigest()}".encode()
        await asyncio.wait_for(channel.wait_closed(), 5)


async def test_rejections() -> None:
    async with hub_server() as hub, agent(hub) as tunnel:
        with pytest.raises(ChannelOpenError) as info:
            await tunnel.open_channel("ftp", {})
        assert info.value.code is OpenFailure.UNKNOWN_KIND
        assert info.value.reason == "no ftp here"
        with pytest.raises(ChannelOpenError) as info:
            await tunnel.open_channel("silent", {})
        assert info.value.code is OpenFailure.REFUSED
        # The agent has no on_channel: the hub's requests are refused.
        hub_tunnel = hub.tunnels[0]
        with pytest.raises(ChannelOpenError) as info:
            await hub_tunnel.open_channel("ssh", {})
        assert info.value.code is OpenFailure.UNKNOWN_KIND


async def test_hub_opens_channel_to_agent_with_receiver_callback() -> None:
    got: list[bytes] = []
    eof = asyncio.Event()

    async def agent_handler(request: ChannelRequest) -> None:
        channel = request.accept()

        def on_data(data: bytes) -> None:
            got.append(data)
            channel.consumed(len(data))

        channel.set_receiver(on_data, eof.set)

    async with hub_server() as hub, agent(hub, handler=agent_handler):
        while not hub.tunnels:
            await asyncio.sleep(0.01)
        channel = await hub.tunnels[0].open_channel("ssh", {"login": "pi"})
        assert channel.channel_id == 2
        big = os.urandom(10 << 20)
        channel.write(big)
        channel.write_eof()
        await asyncio.wait_for(eof.wait(), 10)
        assert b"".join(got) == big
        channel.close()
        await asyncio.wait_for(channel.wait_closed(), 5)


async def test_open_timeout() -> None:
    async def slow(request: ChannelRequest) -> None:
        await asyncio.sleep(1)
        request.accept()

    async with hub_server() as hub, agent(hub, handler=slow):
        while not hub.tunnels:
            await asyncio.sleep(0.01)
        with pytest.raises(ChannelOpenError) as info:
            await hub.tunnels[0].open_channel("ssh", {}, timeout=0.1)
        assert info.value.code is OpenFailure.CONNECT_FAILED


async def test_tunnel_loss_wakes_readers() -> None:
    async with hub_server() as hub:
        ws = await connect(f"ws://127.0.0.1:{hub.port}", compression=None)
        tunnel = Tunnel(ws, Connection(Role.DIALER))
        run = asyncio.create_task(tunnel.run())
        channel = await tunnel.open_channel("echo", {})
        reader = asyncio.create_task(channel.read())
        await asyncio.sleep(0.05)
        assert not reader.done()
        hub.sockets[0].transport.abort()  # the link dies without a GOAWAY
        assert await asyncio.wait_for(reader, 5) == b""
        await asyncio.wait_for(run, 5)
        assert tunnel.closed.is_set()
        assert tunnel.close_code is ErrorCode.GOING_AWAY
        assert channel.is_closed
        with pytest.raises(TunnelClosed):
            await tunnel.open_channel("echo", {})
        with pytest.raises(ChannelClosedError):
            channel.write(b"x")


async def test_pending_open_fails_when_tunnel_closes() -> None:
    async def never(request: ChannelRequest) -> None:
        await asyncio.sleep(3600)

    async with hub_server() as hub, agent(hub, handler=never):
        while not hub.tunnels:
            await asyncio.sleep(0.01)
        hub_tunnel = hub.tunnels[0]
        opening = asyncio.create_task(hub_tunnel.open_channel("ssh", {}, timeout=None))
        await asyncio.sleep(0.05)
        await hub_tunnel.close(ErrorCode.GOING_AWAY, "hub restarting")
        with pytest.raises(TunnelClosed):
            await opening


async def test_graceful_close_reaches_peer() -> None:
    async with hub_server() as hub:
        async with agent(hub) as tunnel:
            channel = await tunnel.open_channel("echo", {})
            await tunnel.close(ErrorCode.NORMAL, "agent shutting down")
            assert await channel.read() == b""
        hub_tunnel = hub.tunnels[0]
        await asyncio.wait_for(hub_tunnel.closed.wait(), 5)
        assert hub_tunnel.close_code is ErrorCode.NORMAL
        assert hub_tunnel.close_reason == "agent shutting down"


async def test_goaway_retry_after_reaches_agent() -> None:
    async with hub_server() as hub, agent(hub) as tunnel:
        while not hub.tunnels:
            await asyncio.sleep(0.01)
        await hub.tunnels[0].close(ErrorCode.GOING_AWAY, "hub restarting", retry_after=7.5)
        await asyncio.wait_for(tunnel.closed.wait(), 5)
        assert tunnel.close_code is ErrorCode.GOING_AWAY
        assert tunnel.close_reason == "hub restarting"
        assert tunnel.retry_after == 7.5
        assert hub.tunnels[0].retry_after is None  # only what the peer asked for


async def test_heartbeats_over_websocket() -> None:
    hub_limits = Limits(heartbeat_interval=0.05, allowed_misses=20)
    agent_limits = Limits(heartbeat_interval=0.05, allowed_misses=20, send_heartbeats=True)
    async with hub_server(hub_limits) as hub, agent(hub, agent_limits) as tunnel:
        tunnel.set_heartbeat_payload({"version": "1.0", "backlog": 7})
        for _ in range(100):
            if hub.heartbeats and tunnel.last_rtt is not None:
                break
            await asyncio.sleep(0.02)
        assert hub.heartbeats[-1] == {"version": "1.0", "backlog": 7}
        assert tunnel.last_rtt is not None and tunnel.last_rtt >= 0


async def test_heartbeat_timeout_closes_tunnel() -> None:
    # The hub expects traffic, the agent never pings: the hub gives up.
    hub_limits = Limits(heartbeat_interval=0.05, allowed_misses=2)
    async with hub_server(hub_limits) as hub, agent(hub, Limits(heartbeat_interval=0)) as tunnel:
        await asyncio.wait_for(tunnel.closed.wait(), 5)
        assert tunnel.close_code is ErrorCode.HEARTBEAT_TIMEOUT
        assert hub.tunnels[0].close_code is ErrorCode.HEARTBEAT_TIMEOUT


async def test_partial_reads_across_chunks() -> None:
    async with hub_server() as hub, agent(hub) as tunnel:
        channel = await tunnel.open_channel("echo", {})
        data = bytes(range(256)) * 400
        for start in range(0, len(data), 7000):
            channel.write(data[start : start + 7000])
        await asyncio.sleep(0.05)  # let several chunks pile up in the read buffer
        got = b""
        sizes = [1, 3, 7, 300, 5000, 20000, 0]
        i = 0
        while len(got) < len(data):
            got += await channel.read(sizes[i % len(sizes)])
            i += 1
        assert got == data


async def test_dead_link_ends_run_without_waiting_for_a_closing_handshake() -> None:
    """A peer that went silent (a NAT forgot us) cannot answer a websocket close:
    after HEARTBEAT_TIMEOUT, run() must return at once, not after close_timeout."""
    silent = asyncio.Event()
    peers: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        peers.append(ws)
        ws.transport.pause_reading()  # reads nothing more, answers nothing
        await silent.wait()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None, close_timeout=10) as ws:
            limits = Limits(heartbeat_interval=0.1, allowed_misses=2, send_heartbeats=True)
            tunnel = Tunnel(ws, Connection(Role.DIALER, limits))
            start = asyncio.get_running_loop().time()
            await asyncio.wait_for(tunnel.run(), 8)
            assert tunnel.close_code is ErrorCode.HEARTBEAT_TIMEOUT
            assert asyncio.get_running_loop().time() - start < 5  # not 0.2 s + 10 s
        for peer in peers:
            peer.transport.abort()  # the silent side cannot close politely either
        silent.set()
