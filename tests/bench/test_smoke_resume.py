"""The resume group of benchmarks still runs in smoke mode (tests/bench/smokekit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from smokekit import GROUPS, run_smoke


@pytest.mark.timeout(600)
def test_resume_benchmarks_run_in_smoke_mode(tmp_path: Path) -> None:
    run_smoke(tmp_path, GROUPS["resume"])
