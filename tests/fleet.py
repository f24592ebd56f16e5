"""Simulated agents for tests and the hub scale benchmark: many per process, each with its
own node certificate, a real TLS websocket tunnel, heartbeats and jittered reconnects."""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

from helpers import Cluster

from edge_agent.agent import Backoff
from remoteler.ca import generate_private_key, private_key_to_pkcs8_pem
from remoteler.errors import RemotelerError
from remoteler.hubconn import open_ws
from remoteler.locks import lock_digest
from remoteler.protocol import TUNNEL_ALPN, TUNNEL_SUBPROTOCOL
from remoteler.tlsutil import client_context
from remoteler.wire.aio import Tunnel
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits


def provision(
    cluster: Cluster,
    n: int,
    out: Path,
    storage: str | None = None,
    passphrase: bytes | None = None,
) -> bytes:
    """n node identities signed by the hub's host CA, registered as joined nodes, through
    the storage interface (``storage``: the hub's ``--storage`` value, None for SQLite in
    its data dir; ``passphrase``: the CA passphrase, when the keys are encrypted).
    Returns the host CA's certificate (PEM), which the agents trust."""
    return asyncio.run(_provision(cluster, n, out, storage, passphrase))


async def _provision(
    cluster: Cluster, n: int, out: Path, spec: str | None, passphrase: bytes | None
) -> bytes:
    from hub.cakeys import to_authority
    from hub.storage import open_storage
    from hub.storage.api import Node

    storage = await open_storage(spec, cluster.data)
    try:
        name = await storage.settings.get("cluster") or "remoteler"
        stored = [c for c in await storage.authorities.all() if c.kind == "host"]
        host_ca = to_authority(next(c for c in stored if c.slot == "current"), name, passphrase)
        with out.open("w") as f:
            for i in range(n):
                node_id = str(uuid.uuid4())
                key = generate_private_key()
                cert = host_ca.issue_x509(
                    key.public_key(),
                    common_name=node_id,
                    organization="remoteler-node",
                    usage="client",
                    ttl_seconds=86400,
                )
                f.write(
                    json.dumps(
                        {"cert": cert.decode(), "key": private_key_to_pkcs8_pem(key).decode()}
                    )
                    + "\n"
                )
                await storage.nodes.add(
                    Node(node_id, f"sim-{i:05d}", {"sim": "1"}, joined=time.time())
                )
        return host_ca.x509_pem
    finally:
        await storage.close()


class Fleet:
    def __init__(
        self,
        hub: str,
        identities: list[dict[str, str]],
        ca_pem: bytes,
        heartbeat: float,
        fallback: list[str] | None = None,
    ) -> None:
        """``fallback``: other hub addresses an agent dials, at random, after a failed
        dial or a lost tunnel (bench/cluster.py's stand-in for a real agent's hub list)."""
        self.hub = hub
        self.hubs = [hub, *(fallback or [])]
        #: tunnels that were up and ended (``STATUS.lost`` when there are fallbacks)
        self.lost = 0
        self.identities = identities
        self.ca_pem = ca_pem
        self.limits = Limits(send_heartbeats=True, heartbeat_interval=heartbeat, allowed_misses=3)
        self.connected = 0
        self.backoff = Backoff(base=0.5, cap=10.0, stable_after=30.0)

    async def agent(self, ident: dict[str, str], rng: random.Random) -> None:
        ctx = client_context(
            self.ca_pem, ident["cert"].encode(), ident["key"].encode(), [TUNNEL_ALPN]
        )
        attempt, hub = 0, self.hub
        query = (
            f"?heartbeat={self.limits.heartbeat_interval:g}&misses={self.limits.allowed_misses}"
            f"&locks={lock_digest([])}"  # as a real agent holding no locks
        )
        while True:
            started = time.monotonic()
            retry_after = None
            try:
                ws = await open_ws(
                    hub, "/v1/tunnel" + query, ctx, subprotocol=TUNNEL_SUBPROTOCOL, timeout=60
                )
            except RemotelerError:
                ws = None
            if ws is not None:
                tunnel = Tunnel(ws, Connection(Role.DIALER, self.limits, now=time.monotonic()))
                tunnel.set_heartbeat_payload({"labels": {"sim": "1"}, "version": "loadgen"})
                self.connected += 1
                try:
                    await tunnel.run()
                finally:
                    self.connected -= 1
                    self.lost += 1
                retry_after = tunnel.retry_after
            if len(self.hubs) > 1:  # the dial failed or the tunnel ended: another hub
                hub = rng.choice([h for h in self.hubs if h != hub])
            wait, attempt = self.backoff.next_wait(
                attempt, time.monotonic() - started, retry_after, rng
            )
            await asyncio.sleep(wait)

    async def run(self, status: Path | None, ramp: float) -> None:
        """Run every agent until cancelled; write the connected count to ``status``."""
        rng = random.Random()
        tasks: list[asyncio.Task[Any]] = []
        try:
            for i, ident in enumerate(self.identities):
                tasks.append(asyncio.create_task(self.agent(ident, rng)))
                if ramp and i % 50 == 49:
                    await asyncio.sleep(ramp * 50 / max(1, len(self.identities)))
            lost = None if status is None or len(self.hubs) < 2 else Path(f"{status}.lost")
            while True:
                if status is not None:
                    status.write_text(str(self.connected))
                if lost is not None:
                    lost.write_text(str(self.lost))
                await asyncio.sleep(0.5)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
