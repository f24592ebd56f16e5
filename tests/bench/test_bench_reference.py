"""``make bench`` without OpenSSH: an error naming the package, never a table missing
its reference rows (bench/fixtures.py require_openssh).

sshd is hidden for real: the benchmark runs in its own mount namespace with
/dev/null bound over /usr/sbin/sshd (``unshare``, as root).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from require import find_binary, require_binaries, require_root

ROOT = Path(__file__).resolve().parents[2]


def test_session_setup_without_sshd_names_the_package(tmp_path: Path) -> None:
    require_root("hides sshd with a bind mount in a private mount namespace")
    require_binaries("unshare", "sshd")
    sshd = find_binary("sshd")
    out = tmp_path / "results.json"
    hide = f'mount --bind /dev/null {sshd} && exec "$0" "$@"'
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", hide,
         sys.executable, "-m", "bench", "session_setup", "--smoke", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert (
        "bench: session_setup: the OpenSSH reference rows need sshd: sshd is not installed: "
        "apt-get install openssh-server" in proc.stderr
    ), proc.stderr[-3000:]
    assert "OpenSSH" not in proc.stdout  # no half table passed off as the figures
