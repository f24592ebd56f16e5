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
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fleet import Fleet


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
    fleet = Fleet(args.hub, identities, ca, args.heartbeat, args.fallback)
    asyncio.run(fleet.run(Path(args.status), args.ramp))


if __name__ == "__main__":
    main()
