"""Hub cluster: 2 and 3 hub processes on one PostgreSQL (docs/cluster.md, docs/scaling.md).

1. 20,000 simulated agents in all (``BENCH_CLUSTER_AGENTS``; smoke 20) spread evenly over
   2, then 3 hubs (smoke: 3 only): RSS and idle CPU per hub (median of the hubs),
   PostgreSQL's CPU and row writes per second while idle.
2. One hub killed (SIGKILL): time until every simulated agent is connected again, to a
   surviving hub, and the survivors' CPU per agent taken over.
3. Through a peer hop against direct, with a real edge agent: ``tsh ssh node true`` wall
   time, keystroke echo round trips, relay MiB/s (and the hubs' CPU per relayed MiB),
   and the time for a lock made through one hub to end a session relayed by another.

The simulated agents (bench/loadgen.py, niced as in hub_scale) keep ONE tunnel each and
do not speak the ``hubs`` channel: each is given its hub's address and the others' as
fallbacks to rotate through after a failure. Real agents keep two (docs/cluster.md), so
a real fleet of the same size holds twice the tunnels. The hubs' ``--storage`` is a
throw-away PostgreSQL (tests/pgkit.py); every process is stopped by its pid at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.fixtures import LOGIN, NODE, provision
from bench.footprint import cpu_seconds, rss_mib
from bench.harness import Context, Figure, benchmark, median, p99, rate_mib_s, ratio, timed
from bench.latency import _echo_rtts
from bench.scale import AGENTS_PER_PROCESS, LOADGEN_NICE, ONE_ADDRESS_ARGS, connected, wait_all

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from clusterkit import HubCluster
from helpers import BIN, stop_process, wait_for
from pgkit import PgServer

from remoteler.identity import read_identity_file
from tsh.ssh import open_ssh

BENCH = "hub_cluster"
MiB = 1 << 20
#: what clusterkit.HubCluster writes to its CA passphrase file
PASSPHRASE = b"cluster test passphrase"
ONE_TUNNEL = "simulated agents keep ONE tunnel each (real agents keep 2)"


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (PostgreSQL's postmaster and backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(entry.name) == pid or int(fields[1]) == pid:
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass
class Db:
    server: PgServer
    url: str

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[1]

    def row_writes(self) -> int:
        """Rows inserted, updated and deleted in the database so far (pg_stat_database,
        which backends flush about once a second)."""
        out = self.server.psql(
            "SELECT tup_inserted + tup_updated + tup_deleted FROM pg_stat_database "
            "WHERE datname = current_database()",
            self.name,
        )
        return int(out.strip() or 0)

    def cpu(self) -> float:
        pid = self.server.pid()
        return tree_cpu_seconds(pid) if pid is not None else float("nan")


@dataclass
class Loadgens:
    procs: list[subprocess.Popen[bytes]]
    #: hub index -> the status files of the load generators that dial it first
    statuses: dict[int, list[Path]]

    def all_statuses(self) -> list[Path]:
        return [s for group in self.statuses.values() for s in group]

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)


def start_loadgens(
    cluster: HubCluster, hubs: list[int], n: int, identities: Path, ca: Path, tag: str
) -> Loadgens:
    """n simulated agents, an even share per hub, each rotating through the others."""
    procs: list[subprocess.Popen[bytes]] = []
    statuses: dict[int, list[Path]] = {i: [] for i in hubs}
    share = math.ceil(n / len(hubs))
    for turn, index in enumerate(hubs):
        others = hubs[turn + 1 :] + hubs[:turn]
        first, last = turn * share, min(n, (turn + 1) * share)
        for start in range(first, last, AGENTS_PER_PROCESS):
            status = cluster.root / f"status-{tag}-{start}"
            statuses[index].append(status)
            fallbacks = [a for i in others for a in ("--fallback", cluster.members[i].addr)]
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.loadgen",
                        "--hub",
                        cluster.members[index].addr,
                        *fallbacks,
                        "--identities",
                        str(identities),
                        "--ca",
                        str(ca),
                        "--start",
                        str(start),
                        "--count",
                        str(min(AGENTS_PER_PROCESS, last - start)),
                        "--status",
                        str(status),
                        "--ramp",
                        "5",
                    ],
                    cwd=Path(__file__).resolve().parent.parent,
                    preexec_fn=lambda: os.nice(LOADGEN_NICE),
                )
            )
    return Loadgens(procs, statuses)


def start_hubs(cluster: HubCluster, hubs: list[int]) -> None:
    """Start these hubs side by side (the CAs exist: hub 0 made them); wait until every
    running hub is registered."""
    with ThreadPoolExecutor(len(hubs)) as pool:
        list(pool.map(lambda i: cluster.start_hub(index=i), hubs))
    running = sum(m.proc is not None for m in cluster.members)
    wait_for(lambda: len(cluster.hubs()) == running, timeout=60, what="every hub registered")


def stop_hubs(cluster: HubCluster) -> None:
    for member in cluster.members:
        if member.proc is not None:
            stop_process(member.proc)
            member.proc = None
    cluster.tctl_hub = 0


def run_hubs(ctx: Context, cluster: HubCluster, db: Db, k: int, n: int, ca: Path) -> list[Figure]:
    """Figures 1 and 2 for ``k`` hubs: hubs 0..k-1 run, fresh; hub k-1 is killed."""
    hubs = list(range(k))
    gens = start_loadgens(cluster, hubs, n, cluster.root / "identities.jsonl", ca, f"k{k}")
    try:
        statuses = gens.all_statuses()
        first = wait_all(statuses, n, 900)
        time.sleep(ctx.pick(15.0, 0.2))
        pids = [m.proc.pid for m in cluster.members[:k] if m.proc is not None]
        window = ctx.pick(30.0, 0.5)
        cpu0, pg0, writes0, t0 = (
            [cpu_seconds(p) for p in pids],
            db.cpu(),
            db.row_writes(),
            time.monotonic(),
        )
        time.sleep(window)
        elapsed = time.monotonic() - t0
        cpus = [100 * (cpu_seconds(p) - c) / elapsed for p, c in zip(pids, cpu0, strict=True)]
        pg_cpu = 100 * (db.cpu() - pg0) / elapsed
        writes = (db.row_writes() - writes0) / elapsed
        rss = [rss_mib(p) for p in pids]
        held = {h["id"]: h["agents"] for h in cluster.hubs()}

        victim = k - 1
        # what the killed hub held by its last registration (5 s old at most; idle by
        # now): a few agents may have moved during the first connects
        moved = held.get(cluster.members[victim].id) or connected(gens.statuses[victim])
        survivors = pids[:victim]
        surv0 = sum(cpu_seconds(p) for p in survivors)
        killed = time.monotonic()
        cluster.kill(victim, signal.SIGKILL)
        lost = [Path(f"{s}.lost") for s in statuses]
        before = connected(lost)
        deadline = killed + 60
        while connected(lost) - before < moved and time.monotonic() < deadline:
            time.sleep(0.05)  # every agent of the killed hub has seen its tunnel end
        back = wait_all(statuses, n, 600)
        back = time.monotonic() - killed if not math.isnan(back) else back
        took_cpu = sum(cpu_seconds(p) for p in survivors) - surv0
    finally:
        gens.stop()
    label = f"{k} hubs, {n} agents"
    spread = ", ".join(f"{h} {a}" for h, a in sorted(held.items()))
    return [
        Figure(BENCH, f"{label}: first connect", "s", first, note=ONE_TUNNEL),
        Figure(
            BENCH,
            f"{label}: hub RSS idle (median of hubs)",
            "MiB",
            median(rss),
            max(rss),
            rss,
            note=f"tunnels held: {spread}; {ONE_TUNNEL}",
        ),
        Figure(
            BENCH,
            f"{label}: hub CPU idle (median of hubs)",
            "% core",
            median(cpus),
            max(cpus),
            cpus,
            note=f"over {window:g} s; {ONE_TUNNEL}",
        ),
        Figure(BENCH, f"{label}: PostgreSQL CPU idle", "% core", pg_cpu, note="all its processes"),
        Figure(
            BENCH,
            f"{label}: PostgreSQL row writes idle",
            "rows/s",
            writes,
            note=f"pg_stat_database inserted+updated+deleted over {window:g} s",
        ),
        Figure(
            BENCH,
            f"{label}: all back after one hub killed",
            "s",
            back,
            goal="< 60 s",
            met=(back < 60) if not ctx.smoke else None,
            note=f"{moved} agents moved from the killed hub to the {k - 1} left",
        ),
        Figure(
            BENCH,
            f"{label}: survivors' CPU per agent taken over",
            "ms",
            1000 * took_cpu / max(moved, 1),
            note=f"{took_cpu:.1f} s CPU from the kill to all back",
        ),
    ]


def _tsh_ssh(cluster: HubCluster, ident: Path, hub: str, command: str) -> list[str]:
    return [str(BIN / "tsh"), "-i", str(ident), "--proxy", hub, "ssh", f"{LOGIN}@{NODE}", command]


def _run(cluster: HubCluster, cmd: list[str], stdin: Path | None = None) -> None:
    with open(stdin or "/dev/null", "rb") as f:
        proc = subprocess.run(
            cmd, stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cluster.env()
        )
    if proc.returncode != 0:
        raise RuntimeError(f"tsh failed: {proc.stderr.decode(errors='replace')[-300:]}")


def _lock_ends_session(cluster: HubCluster, ident: Path, relay: str, through: int) -> float:
    """Seconds from ``tctl lock`` (through hub ``through``) returning to the end of a
    session relayed by the hub at ``relay``."""
    out = cluster.root / "lock-session.out"
    with open(out, "wb") as stdout:
        live = subprocess.Popen(
            _tsh_ssh(cluster, ident, relay, "echo started; sleep 120"),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            env=cluster.env(),
        )
    try:
        wait_for(lambda: b"started" in out.read_bytes(), timeout=30, what="session running")
        cluster.tctl_hub = through
        lock = cluster.tctl_json("lock", "--user", "bench", "--message", "bench lock")
        made = time.monotonic()
        live.wait(timeout=30)
        took = time.monotonic() - made
    finally:
        stop_process(live)
    cluster.tctl("unlock", lock["id"])
    wait_for(
        lambda: (
            subprocess.run(
                _tsh_ssh(cluster, ident, relay, "true"), capture_output=True, env=cluster.env()
            ).returncode
            == 0
        ),
        timeout=30,
        what="unlocked",
    )
    return took


def run_hop(ctx: Context, cluster: HubCluster) -> list[Figure]:
    """Figures 3-5: one real edge agent on 2 of 3 hubs; the third reaches it by a peer hop.

    Hubs 0 and 1 run; hub 2 starts while the agent joins."""
    try:
        cluster.add_user("bench", [LOGIN])
        cluster.start_agent(NODE, "env=bench")
        start_hubs(cluster, [2])
        ident = cluster.sign("bench", cluster.root / "bench.identity")  # meanwhile
        wait_for(
            lambda: len(set(cluster.holders().get(NODE, []))) >= 2,
            timeout=60,
            what="the bench node on two hubs",
        )
        held = cluster.holders()[NODE]
        direct = next(m for m in cluster.members if m.id in held)
        hop = next(m for m in cluster.members if m.id not in held)
        routes = {"direct": direct.addr, "peer hop": hop.addr}
        pids = [m.proc.pid for m in cluster.members if m.proc is not None]

        true_ms: dict[str, list[float]] = {}
        rtts: dict[str, list[float]] = {}
        rates: dict[str, list[float]] = {}
        cpu_per_mib: dict[str, float] = {}
        size = ctx.pick(int(os.environ.get("BENCH_CLUSTER_RELAY_MIB", "200")) * MiB, MiB)
        payload = cluster.root / "payload"
        with open(payload, "wb") as f:
            f.truncate(size)  # sparse zeros, encrypted by SSH: nothing compresses
        ident_file = read_identity_file(ident)
        for route, addr in routes.items():
            true_cmd = _tsh_ssh(cluster, ident, addr, "true")

            def run_true(c: list[str] = true_cmd) -> None:
                _run(cluster, c)

            true_ms[route] = [1000 * timed(run_true) for _ in range(ctx.pick(20, 1))]

            async def connect(a: str = addr) -> object:
                return await open_ssh(a, ident_file, LOGIN, NODE)

            rtts[route] = asyncio.run(_echo_rtts(connect, ctx.pick(2000, 20)))
            setup = median(true_ms[route]) / 1000
            cat = _tsh_ssh(cluster, ident, addr, "cat > /dev/null")
            cpu0 = sum(cpu_seconds(p) for p in pids)

            def run_cat(c: list[str] = cat) -> None:
                _run(cluster, c, payload)

            rates[route] = [rate_mib_s(size, timed(run_cat), setup) for _ in range(ctx.repeats)]
            cpu = sum(cpu_seconds(p) for p in pids) - cpu0
            cpu_per_mib[route] = 1000 * cpu / (ctx.repeats * size / MiB)
        locks = [
            _lock_ends_session(cluster, ident, hop.addr, direct.index)
            for _ in range(ctx.pick(5, 1))
        ]
        if set(cluster.holders()[NODE]) != set(held):
            raise RuntimeError("the bench node moved between hubs during the run")
    finally:
        stop_hubs(cluster)
        for proc in cluster.agents.values():
            stop_process(proc)
        cluster.agents.clear()
    d, h = "direct", "peer hop"
    hop_note = f"tsh to {hop.id}, which relays over its peer link to {direct.id}"
    figures = [
        Figure(
            BENCH, "tsh ssh true: direct", "ms", median(true_ms[d]), p99(true_ms[d]), true_ms[d]
        ),
        Figure(
            BENCH,
            "tsh ssh true: peer hop",
            "ms",
            median(true_ms[h]),
            p99(true_ms[h]),
            true_ms[h],
            reference="direct",
            ratio=ratio(median(true_ms[h]), median(true_ms[d])),
            note=f"whole process; {hop_note}",
        ),
        Figure(BENCH, "keystroke echo: direct", "ms", median(rtts[d]), p99(rtts[d]), rtts[d]),
        Figure(
            BENCH,
            "keystroke echo: peer hop",
            "ms",
            median(rtts[h]),
            p99(rtts[h]),
            rtts[h],
            reference="direct",
            ratio=ratio(median(rtts[h]), median(rtts[d])),
            goal="p99 adds < 1 ms",
            met=(p99(rtts[h]) - p99(rtts[d]) < 1.0) if not ctx.smoke else None,
            note=f"p99 added by the hop: {p99(rtts[h]) - p99(rtts[d]):.3f} ms",
        ),
        Figure(BENCH, "relay: direct", "MiB/s", median(rates[d]), samples=rates[d]),
        Figure(
            BENCH,
            "relay: peer hop",
            "MiB/s",
            median(rates[h]),
            samples=rates[h],
            reference="direct",
            ratio=ratio(median(rates[h]), median(rates[d])),
            note=f"tsh ssh 'cat > /dev/null' < {size // MiB} MiB, set-up time taken off",
        ),
        Figure(BENCH, "hub CPU per relayed MiB: direct", "ms/MiB", cpu_per_mib[d]),
        Figure(
            BENCH,
            "hub CPU per relayed MiB: peer hop",
            "ms/MiB",
            cpu_per_mib[h],
            reference="direct",
            ratio=ratio(cpu_per_mib[h], cpu_per_mib[d]),
            note="all three hubs' CPU during the transfers",
        ),
        Figure(
            BENCH,
            "lock through one hub ends a session relayed by another",
            "s",
            median(locks),
            max(locks),
            locks,
            goal="< 1 s",
            met=(max(locks) < 1.0) if not ctx.smoke else None,
            note=f"lock through {direct.id}, session on {hop.id}; from tctl lock's return",
        ),
    ]
    return figures


@contextlib.contextmanager
def cluster_on_postgres(ctx: Context) -> Iterator[tuple[HubCluster, Db]]:
    server = PgServer.start()
    cluster: HubCluster | None = None
    try:
        db = Db(server, server.new_database())
        root = ctx.workdir / "cluster"
        root.mkdir()
        cluster = HubCluster(
            root, 0, storage_url=db.url, count=3, hub_flags=tuple(ONE_ADDRESS_ARGS)
        )
        yield cluster, db
    finally:
        if cluster is not None:
            cluster.stop()
        server.stop()


@benchmark(BENCH)
def hub_cluster(ctx: Context) -> list[Figure]:
    n = ctx.pick(int(os.environ.get("BENCH_CLUSTER_AGENTS", "20000")), 20)
    figures: list[Figure] = []
    with cluster_on_postgres(ctx) as (cluster, db):
        start_hubs(cluster, [0])  # makes the CAs, which provisioning signs with
        ca = cluster.root / "host_ca.crt"
        ca.write_bytes(provision(cluster, n, cluster.root / "identities.jsonl", db.url, PASSPHRASE))
        # smoke: the 3-hub round alone (a round is the same code for any k)
        for turn, k in enumerate(ctx.pick((2, 3), (3,))):
            if turn:
                stop_hubs(cluster)  # fresh hubs, so that each RSS figure is its own size's
            start_hubs(cluster, [i for i in range(k) if cluster.members[i].proc is None])
            figures += run_hubs(ctx, cluster, db, k, n, ca)  # kills hub k-1
        figures += run_hop(ctx, cluster)  # after the 3-hub round: hubs 0 and 1 run
    return figures
