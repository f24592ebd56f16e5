"""A small tmpfs for full-disk tests: mounted by the test, always unmounted after.

Needs root and mount(8); a missing one fails the test with a one-line hint (never
skips: a full disk is part of what the product promises to survive).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["fill", "free_bytes", "tmpfs"]


@contextlib.contextmanager
def tmpfs(path: Path, size: int = 8 << 20) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path`` (created), unmounted on exit."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.fail(
            f"cannot mount a tmpfs ({done.stderr.strip()}): full-disk tests need root and "
            "mount(8) (Debian package mount)"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False, capture_output=True)
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], check=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(dirpath: Path, leave: int = 0, name: str = "filler") -> Path:
    """Write ``dirpath/name`` so that about ``leave`` bytes stay free (0: none at all);
    unlink it to free the space again."""
    filler = dirpath / name
    want = max(0, free_bytes(dirpath) - leave)
    block = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as f:
        try:
            while want > 0:
                want -= f.write(block[: min(len(block), want)])
            if leave == 0:
                while True:  # to the last byte
                    f.write(b"\0" * 4096)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler
