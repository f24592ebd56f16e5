"""glibc malloc thresholds for bulk transfers (remoteler/malloc.py)."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from remoteler import malloc


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tune_is_taken_by_glibc() -> None:
    # In a child, so this test process keeps glibc's dynamic thresholds.
    code = "from remoteler import malloc; print(malloc.tune())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    libc_is_glibc = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")
    assert out.stdout.strip() == str(libc_is_glibc)


def test_thresholds_cover_a_bulk_frame() -> None:
    # A 256 KiB SSH packet or tunnel frame, with headers, comes from the heap.
    assert malloc.MMAP_THRESHOLD > 256 * 1024 + 1024
    assert malloc.TRIM_THRESHOLD >= 2 * malloc.MMAP_THRESHOLD
