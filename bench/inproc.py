"""In-process SSH connections for the benchmarks: through the hub, or direct to TCP."""

from __future__ import annotations

from typing import Any

from bench.direct import connect_direct_tcp
from bench.fixtures import LOGIN, NODE, Rig
from remoteler.identity import read_identity_file
from tsh.ssh import open_ssh


async def connect_via_hub(rig: Rig) -> Any:
    return await open_ssh(rig.cluster.addr, read_identity_file(rig.identity), LOGIN, NODE)


async def connect_direct(rig: Rig, port: int) -> Any:
    return await connect_direct_tcp(rig.identity, port, LOGIN, NODE)
