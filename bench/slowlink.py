"""Keystrokes on a slow link beside a bulk download and its recording upload.

The agent dials the hub through :class:`faultproxy.FaultProxy` capped at 10 KiB/s
each way with an 8 KiB link buffer (a modem's queue); ``tsh``'s side talks to the
hub directly. One session runs ``head -c N /dev/urandom`` (the bulk download;
its output is also recorded, so the recording upload competes for the same
link), another runs ``cat``; once the bulk has filled every queue, each
keystroke's echo round trip is timed. Figures: keystroke median and p99, and the
bulk session's throughput meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import sys
import time
from pathlib import Path
from typing import Any

from bench.fixtures import node_online, pin_once
from bench.harness import Context, Figure, benchmark, median, p99

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from faultproxy import FaultProxy
from helpers import Cluster, free_port, wait_for

from remoteler.identity import read_identity_file
from tsh.ssh import open_ssh

LOGIN = pwd.getpwuid(os.geteuid()).pw_name
NODE = "slow-node"
RATE = 10 * 1024
LINK_BUFFER = 8 * 1024
#: Longest a keystroke is waited for (the old code took up to ~70 s).
KEY_TIMEOUT = 180.0


async def measure(hub: str, identity: Path, keys: int, settle: float) -> dict[str, Any]:
    """Keystroke round trips (s) while a bulk download runs; its bytes/s meanwhile."""
    ident = read_identity_file(identity)
    bulk_conn = await open_ssh(hub, ident, LOGIN, NODE)
    tty_conn = await open_ssh(hub, ident, LOGIN, NODE)
    got = [0]

    async def drain(stream: Any) -> None:
        while data := await stream.read(65536):
            got[0] += len(data)

    try:
        tty = await tty_conn.create_process("cat", encoding=None)
        bulk = await bulk_conn.create_process("head -c 50000000 /dev/urandom", encoding=None)
        reader = asyncio.ensure_future(drain(bulk.stdout))
        await asyncio.sleep(settle)  # every queue on the path fills
        start, start_bytes = time.monotonic(), got[0]
        rtts = []
        for _ in range(keys):
            t0 = time.monotonic()
            tty.stdin.write(b"k")
            await asyncio.wait_for(tty.stdout.readexactly(1), KEY_TIMEOUT)
            rtts.append(time.monotonic() - t0)
            await asyncio.sleep(0.3)
        rate = (got[0] - start_bytes) / (time.monotonic() - start)
        reader.cancel()
        return {"rtts": rtts, "bulk_rate": rate}
    finally:
        for conn in (bulk_conn, tty_conn):
            conn.close()


@benchmark("keystroke_slow_link")
def keystroke_slow_link(ctx: Context) -> list[Figure]:
    keys, settle = ctx.pick((40, 8.0), (1, 0.5))
    cluster = Cluster(ctx.workdir / "cluster", free_port())
    cluster.root.mkdir(parents=True, exist_ok=True)
    cluster.start_hub()
    proxy = FaultProxy("127.0.0.1", cluster.hub_port, link_buffer=LINK_BUFFER).start()
    try:
        pin_once(cluster)
        cluster.start_agent(NODE, "", hub=proxy.addr)  # it joins while the user is made
        cluster.add_user("bench", [LOGIN])
        identity = ctx.workdir / "bench-id"
        cluster.tctl("auth", "sign", "--user", "bench", "--ttl", "1h", "-o", str(identity))
        wait_for(lambda: node_online(cluster, identity, NODE), what="slow node online")
        proxy.bandwidth(RATE)
        result = asyncio.run(measure(cluster.addr, identity, keys, settle))
    finally:
        proxy.stop()
        cluster.stop()
    rtts = [r * 1000 for r in result["rtts"]]
    return [
        Figure(
            "keystroke_slow_link",
            "keystroke beside bulk + recording, 10 KiB/s",
            "ms",
            median(rtts),
            p99(rtts),
            samples=rtts,
            goal="p99 < 2000 ms",
            met=None if ctx.smoke else p99(rtts) < 2000,
            note=f"bulk download meanwhile {result['bulk_rate'] / 1024:.1f} KiB/s",
        )
    ]
