"""Peers that send and never read: websocket pings (/v1/rpc with no certificate,
/v1/tunnel with a node's), tunnel PING frames, and a peer gone silent mid-close.

The hub must cut each off (hub/net/wsguard.py, remoteler/wire), keep its memory
bounded (VmRSS of the real hub process), and keep serving others meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import ssl
import time
from collections.abc import Awaitable
from typing import Any, cast

import pytest
from helpers import Cluster
from hubkit import FakeAgent, Hub
from websockets.asyncio.client import connect
from wsflood import (
    OP_BINARY,
    close_quietly,
    flood,
    open_raw,
    tunnel_pings,
    vm_rss,
    ws_frame,
    ws_ping,
)

import hub.api.server as hub_server
from edge_agent.join import join
from hub.net.wsguard import GuardedConnection, WsGuardLimits
from remoteler import rpc
from remoteler.ca import private_key_to_pkcs8_pem
from remoteler.hubconn import fetch_cluster_info
from remoteler.protocol import CONNECT_SUBPROTOCOL, TUNNEL_ALPN, TUNNEL_SUBPROTOCOL
from remoteler.tlsutil import client_context
from remoteler.wire.aio import ChannelRequest

MiB = 1 << 20
#: how long each flood may run: the hub cuts it off in ~3 s (after the kernel's
#: socket buffers, some MiB, are full); a loaded CI machine processes pings slower
ATTACK_S = 20.0
#: hub growth allowed over the attack: before the caps it grew ~25 MiB/s per connection
RSS_BOUND = 48 * MiB
FLOODERS = 2


def insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class PeakRss:
    """Samples a process's VmRSS every 50 ms while in use."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = vm_rss(pid)
        self.peak = self.before
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, vm_rss(self.pid))
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.ensure_future(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.peak = max(self.peak, vm_rss(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.before


async def legit_rpc_during(attack: Awaitable[Any], addr: str) -> tuple[Any, float]:
    """Run ``attack``; 0.5 s in, a legitimate RPC (tsh's first call) must answer."""
    task = asyncio.ensure_future(attack)
    await asyncio.sleep(0.5)
    start = time.monotonic()
    info = await asyncio.wait_for(fetch_cluster_info(addr), 20)
    assert info["cluster"]
    took = time.monotonic() - start
    return await task, took


async def test_ping_flood_without_client_cert_is_cut_off(cluster: Cluster) -> None:
    assert cluster.hub is not None
    streams = [
        await open_raw("127.0.0.1", cluster.hub_port, "/v1/rpc", insecure(), rpc.SUBPROTOCOL)
        for _ in range(FLOODERS)
    ]
    try:
        async with PeakRss(cluster.hub.pid) as rss:
            floods, _ = await legit_rpc_during(
                asyncio.gather(*(flood(w, ws_ping(), ATTACK_S) for _, w in streams)),
                cluster.addr,
            )
        assert all(f.cut for f in floods), (
            f"the hub kept taking pings it could not answer: {floods}"
        )
        assert rss.growth < RSS_BOUND, f"hub grew {rss.growth / MiB:.0f} MiB"
        # Counted into the listener's once-a-minute summary, not a line per cut (A7).
        log = (cluster.root / "hub.log").read_text()
        assert "websocket aborted" not in log, log[-2000:]
    finally:
        for _, writer in streams:
            close_quietly(writer)


async def test_ping_flood_on_the_tunnel_is_cut_off(cluster: Cluster) -> None:
    assert cluster.hub is not None
    ident = await join(cluster.addr, cluster.token(), cluster.ca_pin(), "flood", {}, "test")
    ctx = client_context(
        ident.host_ca_pem, ident.tls_cert, private_key_to_pkcs8_pem(ident.key), [TUNNEL_ALPN]
    )
    _, writer = await open_raw(
        "127.0.0.1", cluster.hub_port, "/v1/tunnel?heartbeat=30&misses=3", ctx, TUNNEL_SUBPROTOCOL
    )
    try:
        async with PeakRss(cluster.hub.pid) as rss:
            result, _ = await legit_rpc_during(flood(writer, ws_ping(), ATTACK_S), cluster.addr)
        assert result.cut, "the hub kept taking pings it could not answer"
        assert rss.growth < RSS_BOUND, f"hub grew {rss.growth / MiB:.0f} MiB"
    finally:
        close_quietly(writer)


async def test_tunnel_ping_frames_without_reading_stay_capped(hub: Hub) -> None:
    """Our own protocol's PINGs: the hub's unsent PONGs stay under the core's cap."""
    cap = 256  # a small cap: the flood outruns it within the test's seconds
    hub.server.limits = dataclasses.replace(hub.server.limits, max_queued_control=cap)
    cert, key = await hub.node_creds("flood")
    ctx = cast(ssl.SSLContext, hub.tls(cert, key, alpn=[TUNNEL_ALPN]))
    _, writer = await open_raw(
        "127.0.0.1", hub.port, "/v1/tunnel?heartbeat=30&misses=3", ctx, TUNNEL_SUBPROTOCOL
    )
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            for live in hub.server.registry.live():  # the flooder's tunnel only
                if not most:  # a slow link: the PONGs soon wait in the hub, not the kernel
                    sock = live.tunnel.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
                most = max(most, live.tunnel._core.queued_control, 1)
            await asyncio.sleep(0.01)

    watcher = asyncio.ensure_future(watch())
    try:
        result, _ = await legit_rpc_during(tunnel_pings(writer, 4.0), f"127.0.0.1:{hub.port}")
        assert result.sent > cap, "the flood did not get going"
        assert most <= cap, f"{most} control frames queued for one tunnel (cap {cap})"
    finally:
        watcher.cancel()
        close_quietly(writer)


async def test_silent_peer_is_closed_by_the_idle_timeout_and_close_deadline(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that made the hub buffer replies past websockets' write limit, then
    went silent, is gone after the RPC idle timeout + the close deadline (here
    2 s + 1 s): close() used to wait for the buffer to drain, for ever."""
    monkeypatch.setattr(hub_server, "RPC_IDLE_TIMEOUT", 2.0)
    assert hub.server.listener is not None and hub.server.server is not None
    hub.server.listener.guard = WsGuardLimits(close_timeout=1.0, max_unsent=64 * MiB)
    opened = time.monotonic()
    _, writer = await open_raw("127.0.0.1", hub.port, "/v1/rpc", insecure(), rpc.SUBPROTOCOL)
    try:
        (conn,) = hub.server.server.connections
        # A small kernel send buffer (no autotuning), as on a slow link: what the
        # peer leaves unread is soon in the hub's own buffers.
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 8192
        )
        ping = ws_ping() * 64
        with contextlib.suppress(ConnectionError):  # pings until write_limit is passed
            while conn.transport.get_write_buffer_size() < 64 * 1024:
                assert time.monotonic() - opened < 1.5, "could not fill the hub's buffer"
                writer.write(ping)
                await writer.drain()
                await asyncio.sleep(0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.wait_closed(), 8)
        assert conn.state.name == "CLOSED", "the silent peer's connection is still open"
        assert time.monotonic() - opened < 5
        assert "closing took" in (getattr(conn, "aborted_for", None) or "")
    finally:
        close_quietly(writer)


async def test_a_send_the_peer_never_reads_is_aborted_at_the_stall_deadline(hub: Hub) -> None:
    """The hub has an answer to send and the peer reads nothing: the send gives up
    after ``stall_timeout`` (here 1 s) instead of holding the connection for ever."""
    assert hub.server.listener is not None and hub.server.server is not None
    hub.server.listener.guard = WsGuardLimits(stall_timeout=1.0, max_unsent=64 * MiB)
    _, writer = await open_raw("127.0.0.1", hub.port, "/v1/rpc", insecure(), rpc.SUBPROTOCOL)
    try:
        (conn,) = hub.server.server.connections
        conn.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 8192
        )
        ping = ws_ping() * 64
        async with asyncio.timeout(5):  # unread PONGs past write_limit: sends now wait
            while conn.transport.get_write_buffer_size() < 64 * 1024:
                writer.write(ping)
                await writer.drain()
                await asyncio.sleep(0)
        writer.write(ws_frame(OP_BINARY, rpc.encode({"id": 1, "method": "ping", "params": {}})))
        asked = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(conn.wait_closed(), 6)
        assert conn.state.name == "CLOSED", "the hub still waits to send its answer"
        assert time.monotonic() - asked < 5
        assert "took no data" in (getattr(conn, "aborted_for", None) or "")
    finally:
        close_quietly(writer)


class EchoAgent(FakeAgent):
    async def on_channel(self, request: ChannelRequest) -> None:
        channel = request.accept()
        while data := await channel.read(1 << 20):
            channel.write(data)
            await channel.drain()
        channel.write_eof()


async def test_a_bulk_relay_stays_far_below_the_cap(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Legitimate traffic, measured: 4 MiB echoed through /v1/connect and the tunnel
    in 256 KiB messages over small socket buffers, the user's client pinging every
    50 ms. What the peers made
    the hub buffer beyond its own message in flight stays far below ``max_unsent``."""
    most = raw = 0
    original = GuardedConnection.data_received

    slow: set[GuardedConnection] = set()

    def measured(self: GuardedConnection, data: bytes) -> None:
        nonlocal most, raw
        if self not in slow:  # small kernel buffers, as on a slow link: ours fill
            slow.add(self)
            sock = self.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        original(self, data)
        if not self.transport.is_closing():
            unsent = self.transport.get_write_buffer_size()
            raw = max(raw, unsent)
            most = max(most, unsent - self._own_bytes)

    monkeypatch.setattr(GuardedConnection, "data_received", measured)
    agent = EchoAgent()
    await agent.dial(hub, "echo")
    try:
        async with asyncio.timeout(60):
            while not hub.server.registry.live():
                await asyncio.sleep(0.02)
            creds = await hub.user_creds("alice")
            async with connect(
                hub.url("/v1/connect?node=echo&login=pi"),
                ssl=hub.tls(*creds),
                compression=None,
                subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
                ping_interval=0.05,
                max_size=2 << 20,
            ) as ws:
                chunk, total = os.urandom(256 * 1024), 4 * MiB

                async def send() -> None:
                    for _ in range(total // len(chunk)):
                        await ws.send(chunk)

                sender = asyncio.ensure_future(send())
                got = 0
                while got < total:
                    got += len(await ws.recv())
                await sender
    finally:
        await agent.close()
    assert got == total
    assert len(slow) == 2, "the tunnel and /v1/connect: both guarded"
    assert raw > 0, "the relay never had bytes waiting: nothing was measured"
    assert most < WsGuardLimits().max_unsent // 4, f"{most} bytes unsent beyond our own"
