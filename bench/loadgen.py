"""Simulated agents for the hub scale benchmark: many per process, each with its own
node certificate, a real TLS websocket tunnel, heartbeats and jittered reconnects.

``python -m bench.loadgen --hub ADDR --identities FILE --start I --count N --status FILE``
writes how many of its agents are connected to FILE every half second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import time
from pathlib import Path
from typing import Any

from edge_agent.agent import TUNNEL_SUBPROTOCOL, Backoff
from remoteler.errors import RemotelerError
from remoteler.hubconn import open_ws
from remoteler.tlsutil import TUNNEL_ALPN, client_context
from remoteler.wire.aio import Tunnel
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits


class Fleet:
    def __init__(
        self, hub: str, identities: list[dict[str, str]], ca_pem: bytes, heartbeat: float
    ) -> None:
        self.hub = hub
        self.identities = identities
        self.ca_pem = ca_pem
        self.limits = Limits(send_heartbeats=True, heartbeat_interval=heartbeat, allowed_misses=3)
        self.connected = 0
        self.backoff = Backoff(base=0.5, cap=10.0, stable_after=30.0)

    async def agent(self, ident: dict[str, str], rng: random.Random) -> None:
        ctx = client_context(
            self.ca_pem, ident["cert"].encode(), ident["key"].encode(), [TUNNEL_ALPN]
        )
        attempt = 0
        query = f"?heartbeat={self.limits.heartbeat_interval:g}&misses={self.limits.allowed_misses}"
        while True:
            started = time.monotonic()
            try:
                ws = await open_ws(
                    self.hub, "/v1/tunnel" + query, ctx, subprotocol=TUNNEL_SUBPROTOCOL, timeout=60
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
            if time.monotonic() - started > self.backoff.stable_after:
                attempt = 0
            await asyncio.sleep(self.backoff.delay(attempt, rng))
            attempt += 1

    async def run(self, status: Path, ramp: float) -> None:
        rng = random.Random()
        tasks: list[asyncio.Task[Any]] = []
        for i, ident in enumerate(self.identities):
            tasks.append(asyncio.create_task(self.agent(ident, rng)))
            if ramp and i % 50 == 49:
                await asyncio.sleep(ramp * 50 / max(1, len(self.identities)))
        while True:
            status.write_text(str(self.connected))
            await asyncio.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hub", required=True)
    parser.add_argument("--identities", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--status", required=True)
    parser.add_argument("--heartbeat", type=float, default=30.0)
    parser.add_argument(
        "--ramp", type=float, default=0.0, help="seconds to spread the first connects over"
    )
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    lines = Path(args.identities).read_text().splitlines()[args.start : args.start + args.count]
    fleet = Fleet(
        args.hub, [json.loads(x) for x in lines], Path(args.ca).read_bytes(), args.heartbeat
    )
    asyncio.run(fleet.run(Path(args.status), args.ramp))


if __name__ == "__main__":
    main()
