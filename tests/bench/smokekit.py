"""Run benchmarks in smoke mode (tiny sizes) and check that figures come out.

The benchmarks are split into groups, one test module each, so that ``pytest -n``
spreads them over the workers instead of one module running every benchmark in turn.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: every benchmark in exactly one group (tests/bench/test_smoke.py checks); a group's
#: smoke run takes about 35-40 s alone on a 2-core machine (hub_cluster, 3 hubs on
#: PostgreSQL, about 35 s by itself): keep them even when adding one
GROUPS: dict[str, tuple[str, ...]] = {
    "client": ("relay_throughput", "session_setup", "keystroke_latency", "recording_proxy"),
    "hub": ("hub_cluster", "audit", "audit_seqmark"),
    "device": (
        "agent_size",
        "agent_footprint",
        "attack_memory",
        "sftp_server",
        "keystroke_slow_link",
    ),
    # breaks and the way back: a session resumed, a dead tunnel, a hub restart's storm
    "resume": ("resume", "dead_tunnel", "hub_scale"),
    "web": ("web_console",),
}


def run_smoke(tmp_path: Path, names: tuple[str, ...]) -> None:
    """``python -m bench --smoke NAMES``: exit 0, a figure per benchmark, no NaN."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *names, "--smoke", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    benches = {f["bench"] for f in doc["figures"]}
    assert benches == set(names), sorted(benches)  # each benchmark gave its figures
    assert all(f["median"] == f["median"] for f in doc["figures"]), "no NaN figures"
    assert "median" in proc.stdout  # the table header
