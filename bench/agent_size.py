"""What the agent costs a small board on disk, and how fast it is up after a (re)start.

* installed size: ``pip install --target`` of this project (no extras: what a
  board gets) with its dependency closure, ``du``-style (bytecode included), split
  into the agent's own code, the hub/tsh code the wheel also carries, and each
  dependency;
* start-up: process start to the first tunnel up (``DATA/status.json`` says so),
  for a first start (join included) and a restart with an identity.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.fixtures import BIN, Cluster, free_port, stop_process, wait_for
from bench.harness import Context, Figure, benchmark, median

ROOT = Path(__file__).resolve().parent.parent
AGENT_CODE = ("remoteler", "edge_agent", "firmware_tools")
NOT_AGENT = ("hub", "tsh")


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def source_copy(dest: Path) -> Path:
    """What the wheel is built from, copied: an in-tree build would leave build/ behind."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    for package in (*AGENT_CODE, *NOT_AGENT):
        shutil.copytree(ROOT / package, dest / package, ignore=skip)
    return dest


def installed_sizes(target: Path, with_deps: bool) -> dict[str, int]:
    """Bytes per top-level entry of a ``pip install --target`` of this project."""
    src = source_copy(target.with_name("src"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), str(src)]
    if not with_deps:
        cmd.append("--no-deps")
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    sizes: dict[str, int] = {}
    for entry in target.iterdir():
        name = entry.name.split("-")[0].split(".")[0] if entry.is_dir() else entry.name
        sizes[name] = sizes.get(name, 0) + tree_bytes(entry)
    return sizes


def status_up(data: Path) -> bool:
    try:
        return bool(json.loads((data / "status.json").read_text())["tunnel_up"])
    except (OSError, ValueError, KeyError):
        return False


def time_to_tunnel(cluster: Cluster, data: Path, *join: str) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [str(BIN / "edge-agent"), "start", "--data-dir", str(data), "--name", data.name, *join],
        stdout=open(data.with_suffix(".log"), "ab"),
        stderr=subprocess.STDOUT,
        env=cluster.env(),
    )
    try:
        wait_for(lambda: status_up(data), timeout=60, interval=0.01, what="tunnel up")
        return time.perf_counter() - start
    finally:
        stop_process(proc)


@benchmark("agent_size")
def agent_size(ctx: Context) -> list[Figure]:
    sizes = installed_sizes(ctx.workdir / "site", with_deps=not ctx.smoke)
    mib = 1024 * 1024
    total = sum(sizes.values()) / mib
    own = sum(sizes.get(n, 0) for n in AGENT_CODE) / mib
    other = sum(sizes.get(n, 0) for n in NOT_AGENT) / mib
    biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:5]
    note = ", ".join(f"{k} {v / mib:.1f}" for k, v in biggest)
    figures = [
        Figure("agent_size", "installed (pip install remoteler)", "MiB", total, note=note),
        Figure("agent_size", "agent's own code", "MiB", own, note="remoteler+edge_agent+fw"),
        Figure("agent_size", "hub+tsh code also in the wheel", "MiB", other),
    ]
    cluster = Cluster(ctx.workdir / "cluster", free_port())
    cluster.root.mkdir(parents=True, exist_ok=True)
    cluster.start_hub()
    try:
        first, again = [], []
        for i in range(ctx.repeats):
            data = cluster.root / f"agent-{i}"
            join = ("--hub", cluster.addr, "--token", cluster.token(), "--ca-pin", cluster.ca_pin())
            first.append(time_to_tunnel(cluster, data, *join))
            again.append(time_to_tunnel(cluster, data))
    finally:
        cluster.stop()
    figures += [
        Figure("agent_size", "first start to tunnel (join)", "s", median(first), samples=first),
        Figure("agent_size", "restart to tunnel", "s", median(again), samples=again),
    ]
    return figures
