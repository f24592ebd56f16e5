"""Every benchmark still runs (tiny sizes). Asserts that figures come out, never timings.

One group here; the others in test_smoke_hub.py and test_smoke_device.py (smokekit.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from smokekit import GROUPS, ROOT, run_smoke


def test_every_benchmark_is_in_one_smoke_group() -> None:
    # in a child: here ``bench`` would be this tests/bench directory
    listing = (
        "import importlib, json; from bench.__main__ import MODULES; "
        "[importlib.import_module(m) for m in MODULES]; "
        "from bench.harness import BENCHMARKS; print(json.dumps(sorted(BENCHMARKS)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", listing], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    benchmarks = json.loads(proc.stdout)
    grouped = [name for names in GROUPS.values() for name in names]
    assert sorted(grouped) == benchmarks, "add the new benchmark to smokekit.GROUPS"


@pytest.mark.timeout(600)
def test_client_benchmarks_run_in_smoke_mode(tmp_path: Path) -> None:
    run_smoke(tmp_path, GROUPS["client"])
