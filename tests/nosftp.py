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


#: The comment (GECOS) of every account :func:`os_user` makes: the run that owns it.
OWNER_TAG = "remoteler-test"


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (/proc/PID/stat field 22), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_comment(pid: int) -> str:
    """The comment naming process ``pid`` (and its start time, as pids are reused)."""
    return f"{OWNER_TAG} pid={pid} start={_process_start(pid)}"


def remove_stale_users(about_to_make: str = "") -> list[str]:
    """Remove the accounts :func:`os_user` made in runs that are gone (killed before
    their ``finally``), and their homes under the temporary directory; an account
    named ``about_to_make`` is stale whatever its owner. Returns the names removed."""
    removed = []
    for pw in pwd.getpwall():
        fields = dict(f.split("=", 1) for f in pw.pw_gecos.split()[1:] if "=" in f)
        if not pw.pw_gecos.startswith(OWNER_TAG + " ") or "pid" not in fields:
            continue
        alive = fields["pid"].isdigit() and owner_comment(int(fields["pid"])) == pw.pw_gecos
        if alive and pw.pw_name != about_to_make:
            continue
        subprocess.run(["userdel", pw.pw_name], capture_output=True, check=False)
        home = Path(pw.pw_dir)
        if home.is_absolute() and home.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(home, ignore_errors=True)
        removed.append(pw.pw_name)
    return removed


@contextmanager
def os_user(prefix: str) -> Iterator[OsUser]:
    """A new OS account (``useradd``) with a home under /tmp, removed afterwards;
    those left by killed runs are removed first (:func:`remove_stale_users`)."""
    useradd = shutil.which("useradd")
    assert useradd, "useradd missing: apt-get install passwd"
    name = f"{prefix}{os.getpid() % 100000}"
    remove_stale_users(about_to_make=name)
    home = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    argv = [useradd, "--no-create-home", "--home-dir", str(home), "--shell", "/bin/sh"]
    argv += ["--comment", owner_comment(os.getpid()), name]
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
