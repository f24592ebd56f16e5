"""Simulated agents for the hub scale benchmarks: many per process, each with its own
node certificate, a real TLS websocket tunnel, heartbeats and jittered reconnects.

``python -m bench.loadgen --hub ADDR [--fallback ADDR ...] --identities FILE --start I
--count N --status FILE`` writes how many of its agents are connected to FILE every half
second (and, with ``--fallback``, how many of their tunnels ended to ``FILE.lost``). With
``--fallback``, an agent whose dial fails or whose tunnel ends dials another
address of ``--hub, --fallback...``, at random: the stand-in for a real agent's hub list
(bench/cluster.py), since a simulated agent keeps one tunnel and does not speak the
``hubs`` channel.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fleet import Fleet

from remoteler.errors import RemotelerError
from remoteler.hubconn import open_ws
from remoteler.locks import lock_digest
from remoteler.protocol import TUNNEL_ALPN, TUNNEL_SUBPROTOCOL
from remoteler.tlsutil import client_context
from remoteler.wire.aio import Tunnel
from remoteler.wire.connection import Connection, Role


class RotatingFleet(Fleet):
    """:class:`fleet.Fleet` whose agents move to another address after a failure."""

    def __init__(
        self,
        hubs: list[str],
        identities: list[dict[str, str]],
        ca_pem: bytes,
        heartbeat: float,
    ) -> None:
        super().__init__(hubs[0], identities, ca_pem, heartbeat)
        self.hubs = hubs
        #: tunnels that were up and ended (written to ``STATUS.lost``)
        self.lost = 0

    async def run(self, status: Path | None, ramp: float) -> None:
        async def count_lost(path: Path) -> None:
            while True:
                path.write_text(str(self.lost))
                await asyncio.sleep(0.5)

        writer = None if status is None else asyncio.create_task(count_lost(Path(f"{status}.lost")))
        try:
            await super().run(status, ramp)
        finally:
            if writer is not None:
                writer.cancel()

    async def agent(self, ident: dict[str, str], rng: random.Random) -> None:
        ctx = client_context(
            self.ca_pem, ident["cert"].encode(), ident["key"].encode(), [TUNNEL_ALPN]
        )
        attempt, hub = 0, self.hubs[0]
        query = (
            f"?heartbeat={self.limits.heartbeat_interval:g}&misses={self.limits.allowed_misses}"
            f"&locks={lock_digest([])}"
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
            # the dial failed or the tunnel ended: another hub, as a real agent would
            hub = rng.choice([h for h in self.hubs if h != hub])
            wait, attempt = self.backoff.next_wait(
                attempt, time.monotonic() - started, retry_after, rng
            )
            await asyncio.sleep(wait)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hub", required=True)
    parser.add_argument(
        "--fallback",
        action="append",
        default=[],
        help="another hub address to dial after a failure (repeat for more)",
    )
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
    identities = [json.loads(x) for x in lines]
    ca = Path(args.ca).read_bytes()
    fleet = (
        RotatingFleet([args.hub, *args.fallback], identities, ca, args.heartbeat)
        if args.fallback
        else Fleet(args.hub, identities, ca, args.heartbeat)
    )
    asyncio.run(fleet.run(Path(args.status), args.ramp))


if __name__ == "__main__":
    main()
