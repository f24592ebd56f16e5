"""A device without OpenSSH's ``sftp-server``, and a second OS account, for the SFTP tests.

:data:`WITHOUT_SFTP_SERVER` is a ``wrapper`` for :meth:`helpers.Cluster.start_agent`:
the agent runs in its own mount namespace where every ``sftp-server`` on this
machine is covered by ``/dev/null`` (a bind mount, gone with the namespace when
the agent exits), so the SFTP tests prove the built-in server, as on a BusyBox
or Yocto device, whatever is installed here.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: Where distributions put OpenSSH's sftp-server (what the agent used to look for).
SFTP_SERVER_PATHS = (
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/ssh/sftp-server",
)


def _hidden_paths() -> list[str]:
    found = [p for p in SFTP_SERVER_PATHS if os.path.exists(p)]
    on_path = shutil.which("sftp-server")
    return [*found, *([on_path] if on_path and on_path not in found else [])]


def _wrapper() -> list[str]:
    unshare = shutil.which("unshare")
    assert unshare, "unshare missing: apt-get install util-linux"
    assert os.geteuid() == 0, "the SFTP tests hide sftp-server with a mount namespace: run as root"
    mounts = "".join(f"mount --bind /dev/null {p} && " for p in _hidden_paths())
    script = f'{mounts}exec "$@"'
    return [unshare, "--mount", "--propagation", "private", "sh", "-c", script, "no-sftp-server"]


WITHOUT_SFTP_SERVER = _wrapper()


def assert_no_sftp_server(pid: int) -> None:
    """Fail unless process ``pid`` sees no executable sftp-server (its mount namespace)."""
    root = f"/proc/{pid}/root"
    for path in (*SFTP_SERVER_PATHS, shutil.which("sftp-server") or SFTP_SERVER_PATHS[0]):
        assert not os.access(root + path, os.X_OK), f"the agent still sees {path}"


@dataclass(frozen=True)
class OsUser:
    """An OS account made for one test module."""

    name: str
    uid: int
    gid: int
    home: Path


@contextmanager
def os_user(prefix: str) -> Iterator[OsUser]:
    """A new OS account (``useradd``) with a home under /tmp, removed afterwards."""
    useradd = shutil.which("useradd")
    assert useradd, "useradd missing: apt-get install passwd"
    name = f"{prefix}{os.getpid() % 100000}"
    home = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    argv = [useradd, "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh", name]
    for attempt in range(5):  # /etc/passwd may be locked a moment by another test's useradd
        run = subprocess.run(argv, capture_output=True, text=True)
        if run.returncode == 0:
            break
        assert attempt < 4, f"useradd {name} failed: {run.stderr.strip()}"
        time.sleep(0.5)
    try:
        pw = pwd.getpwnam(name)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        home.chmod(0o755)
        yield OsUser(name, pw.pw_uid, pw.pw_gid, home)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
