"""Hub memory under floods from peers that send and never read, and after them.

A real ``hub start`` process on loopback; for each attack: its VmRSS before,
the peak while the attack runs (``ATTACK_S``, attackers reconnecting whenever
the hub cuts them off), and its VmRSS ``AFTER_S`` seconds after the attack
stopped; plus how long a legitimate RPC (``tsh``'s first call) takes meanwhile.

- ``ws_ping_rpc``: 4 connections to ``/v1/rpc`` with no certificate, websocket
  PINGs, PONGs never read (hub/net/wsguard.py caps them).
- ``ws_ping_tunnel``: the same on ``/v1/tunnel`` with a joined node's certificate.
- ``tunnel_ping_frames``: the tunnel protocol's own PING frames, never reading
  the PONGs (remoteler/wire caps them).
- ``handshake_slowloris``: 300 sockets from 127.0.0.2-5, each sends a real
  ClientHello and goes silent, and dials again when the hub closes it
  (hub/net/tlswatch.py, per-address caps in hub/net/admission.py).

Figures, not pass/fail: ``docs/security.md`` quotes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from remoteler.protocol import TUNNEL_ALPN, TUNNEL_SUBPROTOCOL

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from helpers import Cluster, free_port
from wsflood import close_quietly, flood, open_raw, tunnel_pings, vm_rss, ws_ping

from bench.harness import Context, Figure, benchmark
from edge_agent.join import join
from remoteler import rpc
from remoteler.ca import private_key_to_pkcs8_pem
from remoteler.hubconn import fetch_cluster_info
from remoteler.tlsutil import client_context

MiB = 1 << 20
#: a legitimate RPC that takes longer counts as failed (and as this many seconds)
RPC_TIMEOUT = 60.0
TUNNEL_PATH = "/v1/tunnel?heartbeat=30&misses=3"

Attack = Callable[[float], Awaitable[None]]


@dataclass
class Result:
    before: float
    peak: float
    after: float
    rpc_seconds: list[float]
    rpc_failed: int
    connections: int


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _client_hello() -> bytes:
    """A real OpenSSL ClientHello (user ALPN), to send by hand and then stall."""
    obj = client_context(None).wrap_bio(
        ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="remoteler-hub"
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


class Attacks:
    def __init__(self, cluster: Cluster, node_ctx: ssl.SSLContext) -> None:
        self.cluster = cluster
        self.node_ctx = node_ctx
        self.connections = 0

    async def _worker(
        self, until: float, path: str, ctx: ssl.SSLContext, sub: str, kind: str
    ) -> None:
        """Flood; when cut off, reconnect and flood again, until ``until``."""
        while (left := until - time.monotonic()) > 0:
            try:
                _, writer = await open_raw("127.0.0.1", self.cluster.hub_port, path, ctx, sub)
            except (OSError, ConnectionError, TimeoutError, ssl.SSLError):
                await asyncio.sleep(0.1)
                continue
            self.connections += 1
            try:
                if kind == "tunnel":
                    await tunnel_pings(writer, left)
                else:
                    await flood(writer, ws_ping(), left)
            finally:
                close_quietly(writer)

    async def _silent_hello(self, until: float, source: str, hello: bytes) -> None:
        """Send a ClientHello, read nothing, wait to be closed; again until ``until``."""
        loop = asyncio.get_running_loop()
        while (left := until - time.monotonic()) > 0:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.bind((source, 0))
                await loop.sock_connect(sock, ("127.0.0.1", self.cluster.hub_port))
                await loop.sock_sendall(sock, hello)
                self.connections += 1
                while await asyncio.wait_for(loop.sock_recv(sock, 65536), left):
                    left = until - time.monotonic()  # the hub's flight: ignore it
            except (OSError, TimeoutError):
                await asyncio.sleep(0.1)
            finally:
                sock.close()

    def run(self, name: str, seconds: float) -> Awaitable[None]:
        until = time.monotonic() + seconds
        if name == "handshake_slowloris":
            hello = _client_hello()
            sources = [f"127.0.0.{i}" for i in range(2, 6)]
            return asyncio.gather(
                *(self._silent_hello(until, sources[i % 4], hello) for i in range(300))
            )
        if name == "ws_ping_rpc":
            workers = [
                self._worker(until, "/v1/rpc", _insecure(), rpc.SUBPROTOCOL, "ws") for _ in range(4)
            ]
        elif name == "ws_ping_tunnel":
            workers = [self._worker(until, TUNNEL_PATH, self.node_ctx, TUNNEL_SUBPROTOCOL, "ws")]
        else:
            workers = [
                self._worker(until, TUNNEL_PATH, self.node_ctx, TUNNEL_SUBPROTOCOL, "tunnel")
            ]
        return asyncio.gather(*workers)


async def _measure(cluster: Cluster, attacks: Attacks, name: str, ctx: Context) -> Result:
    assert cluster.hub is not None
    pid = cluster.hub.pid
    attack_s, after_s = ctx.pick(20.0, 0.5), ctx.pick(60.0, 0.2)
    before = vm_rss(pid)
    peak = before
    attacks.connections = 0
    task = asyncio.ensure_future(attacks.run(name, attack_s))
    rpc_seconds: list[float] = []
    failed = 0
    while not task.done():
        start = time.monotonic()
        try:
            await asyncio.wait_for(fetch_cluster_info(cluster.addr), RPC_TIMEOUT)
            rpc_seconds.append(time.monotonic() - start)
        except Exception:
            rpc_seconds.append(RPC_TIMEOUT)
            failed += 1
        peak = max(peak, vm_rss(pid))
        await asyncio.sleep(0.2)
    await task
    peak = max(peak, vm_rss(pid))
    await asyncio.sleep(after_s)
    return Result(before, peak, vm_rss(pid), rpc_seconds, failed, attacks.connections)


async def _run(ctx: Context) -> list[Figure]:
    cluster = Cluster(ctx.workdir / "cluster", free_port())
    cluster.root.mkdir(parents=True, exist_ok=True)
    cluster.start_hub()
    try:
        ident = await join(cluster.addr, cluster.token(), cluster.ca_pin(), "flood", {}, "bench")
        node_ctx = client_context(
            ident.host_ca_pem, ident.tls_cert, private_key_to_pkcs8_pem(ident.key), [TUNNEL_ALPN]
        )
        await asyncio.sleep(ctx.pick(5.0, 0.2))  # let start-up settle
        attacks = Attacks(cluster, node_ctx)
        figures: list[Figure] = []
        for name in ("ws_ping_rpc", "ws_ping_tunnel", "tunnel_ping_frames", "handshake_slowloris"):
            res = await _measure(cluster, attacks, name, ctx)
            note = f"{res.connections} attack connections; after = {ctx.pick(60, 0.2)} s later"
            for label, value in (("before", res.before), ("peak", res.peak), ("after", res.after)):
                figures.append(
                    Figure(
                        "attack_memory", f"{name} hub RSS {label}", "MiB", value / MiB, note=note
                    )
                )
            figures.append(
                Figure(
                    "attack_memory",
                    f"{name} legit RPC during attack",
                    "s",
                    statistics.median(res.rpc_seconds) if res.rpc_seconds else 0.0,
                    p99=max(res.rpc_seconds, default=0.0),
                    samples=res.rpc_seconds,
                    note=f"{res.rpc_failed} of {len(res.rpc_seconds)} failed",
                )
            )
        return figures
    finally:
        cluster.stop()


@benchmark("attack_memory")
def attack_memory(ctx: Context) -> list[Figure]:
    return asyncio.run(_run(ctx))
