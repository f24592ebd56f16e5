"""The web console benchmark still runs in smoke mode (tests/bench/smokekit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from smokekit import GROUPS, run_smoke


@pytest.mark.timeout(600)
def test_web_benchmark_runs_in_smoke_mode(tmp_path: Path) -> None:
    run_smoke(tmp_path, GROUPS["web"])
