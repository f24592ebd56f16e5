"""Every benchmark still runs (tiny sizes). Asserts that figures come out, never timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)  # every benchmark in turn; ~90 s alone, longer on a loaded CI
def test_all_benchmarks_run_in_smoke_mode(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    benches = {f["bench"] for f in doc["figures"]}
    assert benches >= {
        "relay_throughput",
        "session_setup",
        "keystroke_latency",
        "agent_footprint",
        "hub_scale",
    }
    assert all(f["median"] == f["median"] for f in doc["figures"]), "no NaN figures"
    assert "median" in proc.stdout  # the table header
