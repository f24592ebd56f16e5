"""Agent footprint while idle: RSS, CPU, and bytes a minute on the wire.

Bytes are counted at the agent's TCP socket (``ss -ti``: TLS and websocket
bytes both ways) plus 52 bytes of IPv4 + TCP headers (with timestamps) for every
segment in and out, so pure ACKs are counted too.
"""

from __future__ import annotations

import os
import re
import subprocess
import time

from bench.fixtures import hub_rig
from bench.harness import Context, Figure, benchmark

HEADER_BYTES = 52


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wire_bytes(pid: int) -> int:
    """Bytes in and out of every TCP socket of ``pid``, headers included."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True).stdout.splitlines()
    total = 0
    for i, line in enumerate(out):
        if f"pid={pid}," in line and i + 1 < len(out):
            info = out[i + 1]
            nums = {
                k: int(v)
                for k, v in re.findall(r"(bytes_sent|bytes_received|segs_out|segs_in):(\d+)", info)
            }
            total += nums.get("bytes_sent", 0) + nums.get("bytes_received", 0)
            total += HEADER_BYTES * (nums.get("segs_out", 0) + nums.get("segs_in", 0))
    return total


@benchmark("agent_footprint")
def agent_footprint(ctx: Context) -> list[Figure]:
    window = ctx.pick(180.0, 0.5)
    with hub_rig(ctx.workdir) as rig:
        pid = rig.cluster.agents["bench-node"].pid
        time.sleep(ctx.pick(5.0, 0.1))  # let start-up settle
        cpu0, bytes0, t0 = cpu_seconds(pid), wire_bytes(pid), time.monotonic()
        time.sleep(window)
        cpu1, bytes1, t1 = cpu_seconds(pid), wire_bytes(pid), time.monotonic()
        rss = rss_mib(pid)
    elapsed = t1 - t0
    cpu_pct = 100 * (cpu1 - cpu0) / elapsed
    per_min = (bytes1 - bytes0) * 60 / elapsed
    full = not ctx.smoke
    return [
        Figure(
            "agent_footprint",
            "idle RSS",
            "MiB",
            rss,
            goal="< 45 MiB",
            met=rss < 45 if full else None,
        ),
        Figure(
            "agent_footprint",
            "idle CPU",
            "% core",
            cpu_pct,
            goal="< 0.5%",
            met=cpu_pct < 0.5 if full else None,
        ),
        Figure(
            "agent_footprint",
            "idle wire bytes",
            "B/min",
            per_min,
            goal="<= 300 B/min",
            met=per_min <= 300 if full else None,
            note=f"measured over {elapsed:.0f} s with default heartbeats",
        ),
    ]
