"""A real ``hub start`` process against a node that abuses its own certificate.

The node joins for real (``edge-agent start``), then the test dials the tunnel
itself with that node's identity and sends what a compromised device could:
heartbeats full of new status keys. What the hub keeps for the node, and the
hub process's memory, must stay bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Any

import msgpack
from helpers import Cluster, wait_for
from websockets.asyncio.client import ClientConnection, connect

from edge_agent.identity import NodeIdentity
from remoteler.protocol import TUNNEL_ALPN, TUNNEL_SUBPROTOCOL
from remoteler.tlsutil import client_context
from remoteler.wire.codes import FrameType

#: Heartbeats sent, each with ~900 KiB of keys never seen before (the issue's attack:
#: before heartbeats were replaced and capped, 300 of them took the hub from 85 to
#: 712 MiB). 80 of them grew it by ~165 MiB before the fix.
BEATS = 80
KEYS_PER_BEAT = 9000
#: Generous bound on the hub's RSS growth over the attack (the fix keeps it near 0).
GROWTH_BOUND = 100 << 20


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def join(cluster: Cluster, name: str) -> NodeIdentity:
    """Join ``name`` with the real agent, stop it, return its identity (cert and key)."""
    cluster.start_agent(name)
    # node.json is written last: once it exists the join is complete
    wait_for(NodeIdentity.directory(cluster.root / f"agent-{name}").joinpath("node.json").exists)
    agent = cluster.agents.pop(name)
    os.kill(agent.pid, signal.SIGTERM)
    assert agent.wait(timeout=20) in (0, -signal.SIGTERM)  # it may not have set its handler
    return NodeIdentity.load(cluster.root / f"agent-{name}")


@contextlib.asynccontextmanager
async def raw_tunnel(cluster: Cluster, ident: NodeIdentity) -> Any:
    """A tunnel websocket with the node's certificate; frames are the test's to write.

    Whatever the hub sends (PONGs) is read and dropped, so the hub never waits on us.
    """
    ctx = client_context(ident.host_ca_pem, ident.tls_cert, ident.key_pem, [TUNNEL_ALPN])
    async with connect(
        f"wss://{cluster.addr}/v1/tunnel?heartbeat=30&misses=3",
        ssl=ctx,
        compression=None,
        subprotocols=[TUNNEL_SUBPROTOCOL],  # type: ignore[list-item]
        max_size=None,
        open_timeout=10,
        close_timeout=2,
    ) as ws:

        async def drain(ws: ClientConnection) -> None:
            with contextlib.suppress(Exception):
                async for _ in ws:
                    pass

        reader = asyncio.ensure_future(drain(ws))
        try:
            yield ws
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def ping(seq: int, payload: dict[str, Any] | None) -> bytes:
    return bytes(msgpack.packb([int(FrameType.PING), seq, payload], use_bin_type=True))


def tsh_ls(cluster: Cluster) -> list[dict[str, Any]]:
    proc = cluster.tsh("ls", "-v", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))


def backlog(cluster: Cluster, name: str) -> int:
    return int(
        next(n for n in cluster.tctl_json("nodes", "ls") if n["name"] == name)["audit_pending"]
    )


def test_heartbeat_flood_keeps_status_and_hub_memory_bounded(cluster: Cluster) -> None:
    cluster.add_user("alice", ["pi"])
    assert cluster.login("alice").returncode == 0
    ident = join(cluster, "victim")
    assert cluster.hub is not None
    hub_pid = cluster.hub.pid
    before = rss(hub_pid)
    peak = before
    real = {
        "labels": {"env": "lab"},
        "version": "1.2.3",
        "name": "victim",
        "ssh": "embedded",
        "serial_ports": ["ttyS0"],
        "audit": {"pending": 7, "bytes": 700, "oldest": 1000.0},
    }

    async def attack() -> None:
        nonlocal peak
        async with raw_tunnel(cluster, ident) as ws:
            await ws.send(ping(0, real))
            for beat in range(1, BEATS + 1):
                junk = {f"k{beat}-{i}-{'x' * 80}": i for i in range(KEYS_PER_BEAT)}
                await ws.send(ping(beat, {**real, **junk}))
                if beat % 20 == 0:
                    peak = max(peak, rss(hub_pid))
            # The last word: a normal status without serial ports; it replaces the old one.
            await ws.send(ping(BEATS + 1, {**real, "serial_ports": [], "ssh": "forward"}))
            await asyncio.sleep(0.5)
            peak = max(peak, rss(hub_pid))
            nodes = await asyncio.to_thread(tsh_ls, cluster)
            (victim,) = [n for n in nodes if n["name"] == "victim"]
            assert victim["online"] is True
            assert (victim["serial_ports"], victim["ssh"]) == ([], "forward")
            assert victim["labels"] == {"env": "lab"} and victim["version"] == "1.2.3"
            # no caps in its status, as an agent older than capabilities: none, "-"
            assert victim["caps"] == []
            table = await asyncio.to_thread(cluster.tsh, "ls", "-v")
            header, *rows = table.stdout.splitlines()
            assert header.split()[-1] == "Caps"
            assert [r.split()[-1] for r in rows if r.split()[0] == "victim"] == ["-"]
            assert len(json.dumps(victim)) < 2048
            # tctl reads the stored copy: the backlog of the last status reaches it.
            await asyncio.to_thread(
                wait_for, lambda: backlog(cluster, "victim") == 7, 15, 0.5, "audit backlog 7"
            )

    asyncio.run(asyncio.wait_for(attack(), 60))
    after = rss(hub_pid)
    print(f"hub RSS before {before >> 20} MiB, peak {peak >> 20} MiB, after {after >> 20} MiB")
    assert peak - before < GROWTH_BOUND, f"hub grew {(peak - before) >> 20} MiB"
