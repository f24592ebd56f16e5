"""Hub scale: simulated agents (real TLS, websockets, heartbeats) at 1,000 / 5,000 / 10,000.

Per size: hub RSS and CPU while idle, time for every agent to be back after a
SIGKILL + restart of the hub, and whole-process ``tsh ls`` latency during that
reconnect storm.

``BENCH_STORAGE=postgresql`` runs the hub on a throw-away PostgreSQL (tests/pgkit.py,
Debian's postgresql) with ``--storage`` and a CA passphrase file; the figures are then
labelled "(postgresql)". Default: SQLite in the data dir.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from bench.fixtures import BIN, Cluster, free_port, provision, stop_process, storage_engine
from bench.footprint import cpu_seconds, rss_mib
from bench.harness import Context, Figure, benchmark, median, p99

AGENTS_PER_PROCESS = 2500
#: hub flags for a fleet that all comes from one address (BENCH_HUB_ARGS may override,
#: e.g. --max-agent-handshakes 16, or the defaults back to measure the NAT case)
ONE_ADDRESS_ARGS = ["--max-pending-per-addr", "20000", "--max-agent-handshakes-per-addr", "64"]
#: scheduling priority of the load generators (BENCH_LOADGEN_NICE; 0: as the hub)
LOADGEN_NICE = int(os.environ.get("BENCH_LOADGEN_NICE", "10"))


def connected(statuses: list[Path]) -> int:
    total = 0
    for s in statuses:
        with contextlib.suppress(OSError, ValueError):
            total += int(s.read_text() or 0)
    return total


def wait_all(statuses: list[Path], n: int, timeout: float) -> float:
    start = time.monotonic()
    while connected(statuses) < n:
        if time.monotonic() - start > timeout:
            return float("nan")
        time.sleep(0.2)
    return time.monotonic() - start


def run_size(ctx: Context, n: int, storage: list[str] | None = None) -> list[Figure]:
    root = ctx.workdir / f"n{n}"
    root.mkdir()
    cluster = Cluster(root, free_port())
    # Every simulated agent connects from 127.0.0.1: lift the per-address caps, which
    # would otherwise model a whole fleet behind one carrier NAT (docs/tunnels.md).
    hub_args = [*ONE_ADDRESS_ARGS, *os.environ.get("BENCH_HUB_ARGS", "").split()]
    spec, secret = None, None
    if storage:
        spec, secret = storage[1], b"bench passphrase, not a secret"
        passphrase = root / "ca-passphrase"
        passphrase.write_bytes(secret + b"\n")
        passphrase.chmod(0o600)
        hub_args += [*storage, "--ca-passphrase-file", str(passphrase)]
    cluster.start_hub(*hub_args)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cluster.add_user("bench", ["root"])
        assert cluster.login("bench").returncode == 0
        identities = root / "identities.jsonl"
        host_ca = root / "host_ca.crt"  # what the simulated agents trust
        host_ca.write_bytes(provision(cluster, n, identities, spec, secret))
        statuses = []
        for start in range(0, n, AGENTS_PER_PROCESS):
            status = root / f"status-{start}"
            statuses.append(status)
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.loadgen",
                        "--hub",
                        cluster.addr,
                        "--identities",
                        str(identities),
                        "--ca",
                        str(host_ca),
                        "--start",
                        str(start),
                        "--count",
                        str(min(AGENTS_PER_PROCESS, n - start)),
                        "--status",
                        str(status),
                        "--ramp",
                        "5",
                    ],
                    cwd=Path(__file__).resolve().parent.parent,
                    # The simulated agents stand for devices elsewhere: on this
                    # machine's two cores they yield to the hub and to tsh.
                    preexec_fn=lambda: os.nice(LOADGEN_NICE),
                )
            )
        first = wait_all(statuses, n, 300)
        time.sleep(ctx.pick(10.0, 0.2))
        assert cluster.hub is not None
        pid = cluster.hub.pid
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(ctx.pick(10.0, 0.5))
        idle_cpu = 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        rss = rss_mib(pid)

        cluster.kill_hub()
        deadline = time.monotonic() + 30
        while connected(statuses) > 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # every agent has noticed before the clock starts
        latencies: list[float] = []
        errors = 0
        storm_over = threading.Event()

        def poll_ls() -> None:
            nonlocal errors
            while not storm_over.is_set():
                start = time.perf_counter()
                try:
                    proc = subprocess.run(
                        [str(BIN / "tsh"), "ls", "--format", "json"],
                        capture_output=True,
                        env=cluster.env(),
                        timeout=60,
                    )
                except subprocess.TimeoutExpired:
                    errors += 1  # counted as failed; the figure's note says how many
                    continue
                if proc.returncode == 0:
                    latencies.append((time.perf_counter() - start) * 1000)
                else:
                    errors += 1
                time.sleep(0.2)

        gen_cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        restart = time.monotonic()
        cluster.start_hub(*hub_args)
        profile = os.environ.get("BENCH_PROFILE_HUB")  # py-spy raw output path, optional
        spy = None
        if profile and cluster.hub is not None:
            spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "-p",
                    str(cluster.hub.pid),
                    "-d",
                    "8",
                    "-f",
                    "raw",
                    "-o",
                    profile,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        poller = threading.Thread(target=poll_ls)
        poller.start()
        all_back = not math.isnan(wait_all(statuses, n, 300))
        back = time.monotonic() - restart if all_back else float("nan")
        hub_cpu = cpu_seconds(cluster.hub.pid)
        gen_cpu = sum(cpu_seconds(p.pid) for p in procs) - gen_cpu0
        storm_over.set()
        poller.join()
        if spy is not None:
            spy.wait(timeout=30)
    finally:
        for proc in procs:
            stop_process(proc)
        cluster.stop()
    full = not ctx.smoke
    label = f"{n} agents"
    return [
        Figure("hub_scale", f"{label}: first connect", "s", first),
        Figure(
            "hub_scale",
            f"{label}: hub RSS idle",
            "MiB",
            rss,
            goal="< 1024 MiB at 10k",
            met=(rss < 1024) if full and n >= 10000 else None,
        ),
        Figure("hub_scale", f"{label}: hub CPU idle", "% core", idle_cpu),
        Figure(
            "hub_scale",
            f"{label}: all back after restart",
            "s",
            back,
            goal="< 60 s",
            met=(back < 60) if full else None,
        ),
        Figure(
            "hub_scale",
            f"{label}: hub CPU per agent back",
            "ms",
            1000 * hub_cpu / n,
            note=f"hub start to all back, {hub_cpu:.1f} s CPU; load generator "
            f"{1000 * gen_cpu / n:.2f} ms per agent",
        ),
        Figure(
            "hub_scale",
            f"{label}: tsh ls during storm",
            "ms",
            median(latencies),
            p99(latencies),
            latencies,
            goal="< 1000 ms",
            met=(max(latencies, default=1e9) < 1000) if full else None,
            note=f"{len(latencies)} runs, {errors} failed (hub still starting)",
        ),
    ]


@benchmark("hub_scale")
def hub_scale(ctx: Context) -> list[Figure]:
    sizes = [int(x) for x in os.environ.get("BENCH_SCALE_SIZES", "1000,5000,10000").split(",")]
    figures: list[Figure] = []
    with storage_engine() as (engine, fresh):
        for n in ctx.pick(sizes, [20]):
            spec = fresh()
            if spec is None:
                figures += run_size(ctx, n)
                continue
            for figure in run_size(ctx, n, ["--storage", spec]):
                figures.append(replace(figure, name=f"{figure.name} ({engine})"))
    return figures
