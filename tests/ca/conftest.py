from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from require import require_binary

from remoteler.ca import CertAuthority

SSH_KEYGEN = shutil.which("ssh-keygen")


@pytest.fixture
def user_ca() -> CertAuthority:
    return CertAuthority.generate("user", "example")


@pytest.fixture
def host_ca() -> CertAuthority:
    return CertAuthority.generate("host", "example")


@pytest.fixture
def ssh_keygen_list(tmp_path: Path) -> Callable[[str], str]:
    """Write a certificate line to a file and return ``ssh-keygen -L`` output (TZ=UTC)."""
    keygen = require_binary("ssh-keygen")
    counter = iter(range(1_000_000))

    def run(line: str) -> str:
        path = tmp_path / f"c{next(counter)}-cert.pub"
        path.write_text(line + "\n")
        result = subprocess.run(
            [keygen, "-L", "-f", str(path)],
            capture_output=True,
            text=True,
            env={**os.environ, "TZ": "UTC"},
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"ssh-keygen -L failed: {result.stderr.strip()}")
        return result.stdout

    return run
