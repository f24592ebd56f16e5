"""Resumable sessions (docs/resume.md, issue 18): what numbering, acks and replay cost,
and how soon bytes flow again after a break.

1. **Overhead, core alone** (no I/O): two :class:`ResumeStream` ends pumped frame by
   frame, the writer fed whole SSH packets as asyncssh writes them (32 KiB and
   256 KiB of channel data plus the packet's length, padding and tag). Wire bytes
   beyond the payload per MiB: DATA frame headers one way (the sequence is implicit:
   5 bytes a frame), ACK frames the other way; and the core's MiB/s (one process
   doing both ends' work, so each end costs about half of that).
2. **Throughput on vs off**: a hub and an agent on loopback, an in-process
   ``open_ssh(..., resume=True|False)`` pushing ``BENCH_RESUME_MIB`` (256) MiB into
   ``cat > /dev/null``, on and off alternated each round; MiB/s from the first write
   to the command's exit (connection set-up not counted). Goal: on >= 0.95x off.
   Also the CPU each process (client, hub, agent) spent per MiB, on against off: on
   a loaded machine a steadier view of the cost than the rates (the hub's and the
   agent's include each run's session set-up, the same either way).
3. **Time to resume**: the agent dials the hub through one fault proxy, the client
   through another; an open session runs ``cat``. The link is reset (RST both ways)
   and one byte written at once; the time from the reset to its echo at the client
   is the time until bytes flow again (a reset lets the link back immediately). The
   agent's link (its reconnect backoff, ``--reconnect-max 1``, plus tsh's redial
   backoff are part of it), then the client's link alone (no agent reconnect).
   ``BENCH_RESUME_RESETS`` (15) resets of each.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.fixtures import LOGIN, NODE, hub_rig, node_online, pin_once
from bench.footprint import cpu_seconds
from bench.harness import Context, Figure, benchmark, median, p99, ratio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from faultproxy import FaultProxy
from helpers import Cluster, free_port, wait_for

from remoteler import malloc
from remoteler.identity import read_identity_file
from remoteler.resume.stream import Data, ResumeStream
from tsh.ssh import open_ssh

BENCH = "resume"
MiB = 1 << 20
#: SSH channel data per packet: asyncssh's default 32 KiB and our max_pktsize.
PACKETS = {"32 KiB": 32 * 1024, "256 KiB": 256 * 1024}
#: What the client writes into ``cat`` per call.
WRITE = 256 * 1024
#: Longest wait for a byte to come back after a reset.
ECHO_TIMEOUT = 60.0
#: The agent's log line for each resumable session it starts (edge_agent/resume.py).
SESSION_START = "resumable session start"
GOAL = 0.95


def ssh_packet(data: int) -> int:
    """Bytes on the wire of an SSH_MSG_CHANNEL_DATA packet carrying ``data`` bytes with
    an AEAD cipher (RFC 4253 §6, RFC 5647): length, padding to 16 (at least 4), tag."""
    body = 1 + 1 + 4 + 4 + data  # padding length, message type, channel, string length
    pad = 16 - body % 16
    if pad < 4:
        pad += 16
    return 4 + body + pad + 16


def core_overhead(total: int, write: int) -> dict[str, float]:
    """Pump ``total`` bytes in writes of ``write`` through two ResumeStream ends."""
    a, b = ResumeStream(), ResumeStream()
    a.attach(0, 0.0)
    b.attach(0, 0.0)
    chunk = bytes(write)
    sent = got = data_wire = ack_wire = frames = 0
    start = time.perf_counter()
    while sent < total:
        a.write(chunk)
        sent += write
        for frame in a.take_output(0.0):  # one link message each, as ResumablePipe sends
            data_wire += len(frame)
            frames += 1
            for event in b.receive(frame, 0.0):
                if isinstance(event, Data):
                    got += len(event.data)
        for frame in b.take_output(0.0):
            ack_wire += len(frame)
            a.receive(frame, 0.0)
    took = time.perf_counter() - start
    if got != sent or a.unacked > a.buffer_limit:
        raise RuntimeError(f"core pump lost bytes: sent {sent}, received {got}")
    mib = sent / MiB
    return {
        "headers": (data_wire - sent) / mib,
        "acks": ack_wire / mib,
        "frames": frames / mib,
        "mib_s": mib / took,
    }


def overhead_figures(ctx: Context) -> list[Figure]:
    total = ctx.pick(256 * MiB, 4 * MiB)
    figures = []
    for label, data in PACKETS.items():
        write = ssh_packet(data)
        runs = [core_overhead(total, write) for _ in range(ctx.repeats)]
        first = runs[0]  # the byte counts are the same every run
        per_mib = first["headers"] + first["acks"]
        rates = [r["mib_s"] for r in runs]
        figures += [
            Figure(
                BENCH,
                f"overhead, {label} SSH packets ({write:,} B writes)",
                "B/MiB",
                per_mib,
                note=(
                    f"DATA headers {first['headers']:.1f} B/MiB ({first['frames']:.2f} frames/MiB),"
                    f" ACKs {first['acks']:.1f} B/MiB; {per_mib / MiB * 100:.4f} %"
                ),
            ),
            Figure(
                BENCH,
                f"core alone, write + receive, {label} SSH packets",
                "MiB/s",
                median(rates),
                samples=rates,
                note=f"{total // MiB} MiB through both ends in one process",
            ),
        ]
    return figures


# throughput on vs off ------------------------------------------------------------


async def _push(hub: str, identity: Path, resume: bool, size: int) -> tuple[float, float]:
    """MiB/s of ``size`` bytes into ``cat > /dev/null`` over one fresh session, and the
    CPU seconds this (client) process spent on it."""
    conn = await open_ssh(hub, read_identity_file(identity), LOGIN, NODE, resume=resume)
    try:
        chunk = bytes(WRITE)
        start, cpu = time.perf_counter(), time.process_time()
        process = await conn.create_process("cat > /dev/null", encoding=None)
        left = size
        while left > 0:
            n = min(left, WRITE)
            process.stdin.write(chunk[:n] if n < WRITE else chunk)
            await process.stdin.drain()
            left -= n
        process.stdin.write_eof()
        result = await process.wait()
        took, cpu = time.perf_counter() - start, time.process_time() - cpu
        if result.exit_status != 0:
            raise RuntimeError(f"cat exited {result.exit_status}: {result.stderr!r}")
        return size / MiB / took, cpu
    finally:
        conn.close()
        await conn.wait_closed()


def throughput_figures(ctx: Context) -> list[Figure]:
    size = ctx.pick(int(os.environ.get("BENCH_RESUME_MIB", "256")) * MiB, 1 * MiB)
    rates: dict[bool, list[float]] = {True: [], False: []}
    #: (resume, process) -> CPU seconds per MiB of each run
    cpu: dict[tuple[bool, str], list[float]] = {}
    with hub_rig(ctx.workdir) as rig:
        log = rig.cluster.root / f"agent-{NODE}.log"
        hub = rig.cluster.addr
        assert rig.cluster.hub is not None
        pids = {"hub": rig.cluster.hub.pid, "agent": rig.cluster.agents[NODE].pid}
        asyncio.run(_push(hub, rig.identity, False, min(size, 8 * MiB)))  # warm-up
        for round_ in range(ctx.repeats):
            order = (True, False) if round_ % 2 == 0 else (False, True)
            for resume in order:
                before = log.read_text(errors="replace").count(SESSION_START)
                cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
                rate, client_cpu = asyncio.run(_push(hub, rig.identity, resume, size))
                rates[resume].append(rate)
                spent = {name: cpu_seconds(pid) - cpu0[name] for name, pid in pids.items()}
                for name, seconds in {"client": client_cpu, **spent}.items():
                    cpu.setdefault((resume, name), []).append(seconds / (size / MiB))
                started = log.read_text(errors="replace").count(SESSION_START) - before
                if started != int(resume):  # the figure must be of what it says
                    raise RuntimeError(
                        f"resume={resume}: the agent started {started} resumable sessions"
                    )
    on, off = median(rates[True]), median(rates[False])
    r = ratio(on, off)
    note = f"{size // MiB} MiB into cat > /dev/null, in-process client, on/off alternated"
    cpu_figures = []
    for name in ("client", "hub", "agent"):
        ms_on = [1000 * s for s in cpu[(True, name)]]
        ms_off = median([1000 * s for s in cpu[(False, name)]])
        cpu_figures.append(
            Figure(
                BENCH,
                f"{name} CPU per MiB, resumption on",
                "ms/MiB",
                median(ms_on),
                samples=ms_on,
                reference=f"off: {ms_off:.2f} ms/MiB",
                ratio=ratio(median(ms_on), ms_off),
                note=f"{name} process CPU (user + system) per MiB moved",
            )
        )
    return [
        Figure(BENCH, "throughput, resumption off", "MiB/s", off, samples=rates[False], note=note),
        Figure(
            BENCH,
            "throughput, resumption on",
            "MiB/s",
            on,
            samples=rates[True],
            reference="resumption off",
            ratio=r,
            goal=f">= {GOAL:.2f}x off",
            met=None if ctx.smoke or r is None else r >= GOAL,
            note=note,
        ),
        *cpu_figures,
    ]


# time to resume ------------------------------------------------------------------


async def _resume_times(hub: str, identity: Path, links: dict[str, FaultProxy], n: int) -> Any:
    """Per link name: seconds from its reset to the echo of a byte written right then."""
    conn = await open_ssh(hub, read_identity_file(identity), LOGIN, NODE, resume=True)
    times: dict[str, list[float]] = {name: [] for name in links}
    try:
        process = await conn.create_process("cat", encoding=None)

        async def echo() -> None:
            process.stdin.write(b"x")
            await asyncio.wait_for(process.stdout.readexactly(1), ECHO_TIMEOUT)

        await echo()
        for name, proxy in links.items():
            for _ in range(n):
                await asyncio.sleep(1.0)  # the last resume's stragglers settle
                await echo()
                start = time.perf_counter()
                if not proxy.reset():
                    raise RuntimeError(f"the {name} had no connection to reset")
                await echo()
                times[name].append(time.perf_counter() - start)
        process.stdin.write_eof()
        await process.wait()
    finally:
        conn.close()
        await conn.wait_closed()
    return times


def resume_time_figures(ctx: Context) -> list[Figure]:
    n = ctx.pick(int(os.environ.get("BENCH_RESUME_RESETS", "15")), 1)
    cluster = Cluster(ctx.workdir / "resume-cluster", free_port())
    cluster.root.mkdir(parents=True, exist_ok=True)
    cluster.start_hub()
    agent_link = FaultProxy("127.0.0.1", cluster.hub_port).start()
    user_link = FaultProxy("127.0.0.1", cluster.hub_port).start()
    try:
        pin_once(cluster)
        cluster.start_agent(NODE, "env=bench", hub=agent_link.addr)  # --reconnect-max 1
        cluster.add_user("bench", [LOGIN])
        identity = ctx.workdir / "resume-id"
        cluster.tctl("auth", "sign", "--user", "bench", "--ttl", "1h", "-o", str(identity))
        wait_for(lambda: node_online(cluster, identity), what="bench node online")
        links = {"agent's link": agent_link, "client's link": user_link}
        times = asyncio.run(_resume_times(user_link.addr, identity, links, n))
    finally:
        user_link.stop()
        agent_link.stop()
        cluster.stop()
    notes = {
        "agent's link": "agent reconnect (backoff capped at 1 s) + tsh redial backoff + resume",
        "client's link": "tsh redials at once; the agent's tunnel stays up",
    }
    figures = []
    for name, samples in times.items():
        ms = [s * 1000 for s in samples]
        figures.append(
            Figure(
                BENCH,
                f"time to resume, {name} reset",
                "ms",
                median(ms),
                p99(ms),
                samples=ms,
                note=f"reset to the echo of a byte written then, {n} resets; {notes[name]}",
            )
        )
    return figures


@benchmark("resume")
def resume(ctx: Context) -> list[Figure]:
    # The core and the in-process client run here as they would in tsh and edge-agent,
    # which set these malloc thresholds at start (untuned, every 256 KiB buffer is fresh
    # mmap'd pages: the core measured 4x slower). It stays so for the rest of the run.
    malloc.tune()
    return [*overhead_figures(ctx), *throughput_figures(ctx), *resume_time_figures(ctx)]
