"""glibc malloc thresholds for bulk transfers (remoteler/malloc.py)."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from remoteler import malloc

CODE = "from remoteler import malloc; print(malloc.tune())"


def _tune_in_child(**env: str) -> str:
    # In a child, so this test process keeps glibc's dynamic thresholds.
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, env={**os.environ, **env}
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tune_is_taken_by_glibc() -> None:
    libc_is_glibc = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    assert _tune_in_child() == str(libc_is_glibc)


def test_tune_can_be_turned_off() -> None:
    assert _tune_in_child(**{malloc.ENV: "0"}) == "False"
