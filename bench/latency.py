"""Keystroke latency: round trip of a 1-byte write echoed by ``cat`` on the device."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.fixtures import direct_server, hub_rig
from bench.harness import Context, Figure, benchmark, median, p99
from bench.inproc import connect_direct, connect_via_hub


async def _echo_rtts(connect: Any, n: int) -> list[float]:
    conn = await connect()
    try:
        process = await conn.create_process("cat", encoding=None)
        rtts = []
        for i in range(n + 20):
            start = time.perf_counter()
            process.stdin.write(b"x")
            await process.stdout.readexactly(1)
            if i >= 20:  # warm-up
                rtts.append((time.perf_counter() - start) * 1000)
        process.stdin.write_eof()
        await process.wait()
        return rtts
    finally:
        conn.close()
        await conn.wait_closed()


@benchmark("keystroke_latency")
def keystroke_latency(ctx: Context) -> list[Figure]:
    n = ctx.pick(2000, 20)
    with hub_rig(ctx.workdir) as rig, direct_server(rig) as port:
        direct = asyncio.run(_echo_rtts(lambda: connect_direct(rig, port), n))
        via_hub = asyncio.run(_echo_rtts(lambda: connect_via_hub(rig), n))
    added = p99(via_hub) - p99(direct)
    return [
        Figure("keystroke_latency", "direct", "ms", median(direct), p99(direct), direct),
        Figure(
            "keystroke_latency",
            "via hub",
            "ms",
            median(via_hub),
            p99(via_hub),
            via_hub,
            reference="direct",
            ratio=median(via_hub) / median(direct),
            goal="p99 adds < 1 ms",
            met=None if ctx.smoke else added < 1.0,
            note=f"p99 added by the hub: {added:.3f} ms",
        ),
    ]
