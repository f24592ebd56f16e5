"""A throw-away PostgreSQL server for tests: ``initdb`` into a temp dir, ``pg_ctl`` start/stop.

One server per test session (``pg_server`` in tests/conftest.py, started the first
time a test asks for it; each pytest-xdist worker has its own), one fresh database
per test (:meth:`PgServer.new_database`)::

    url = pg_server.new_database()              # postgresql://postgres@127.0.0.1:PORT/t_...
    url = pg_server.new_database(password=True) # owned by PASSWORD_USER, who needs its password

Debian's ``postgresql`` package provides the binaries (``/usr/lib/postgresql/N/bin``);
missing, the test fails with one line naming it (tests/require.py). As root,
``initdb`` and the server run as the ``postgres`` OS user (``runuser``), since
PostgreSQL refuses to run as root. Loopback only; the socket directory is in the
temp dir. Authentication: ``trust`` for every user but :data:`PASSWORD_USER`,
who must give :data:`PASSWORD` (scram-sha-256), to test password files.
Durability is off (``fsync=off``): a test server is thrown away, never crashed
on purpose by the host.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import free_port
from require import missing_hint

#: The Debian package with initdb and pg_ctl (.ci/run installs it).
PACKAGE = "postgresql"
#: The superuser initdb creates (trust auth on loopback).
SUPERUSER = "postgres"
#: A user that must log in with :data:`PASSWORD` (tests of password files).
PASSWORD_USER = "remoteler_pw"
PASSWORD = "test-password-not-secret"  # a throw-away test server's
#: The OS user the server runs as when the tests run as root.
OS_USER = "postgres"

_HBA = f"""\
local all all trust
host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256
host all all 127.0.0.1/32 trust
"""


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/N/bin`` with initdb and pg_ctl, or None."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        bin_dir = Path(initdb).parent
        with contextlib.suppress(ValueError):
            if (bin_dir / "pg_ctl").exists():
                found.append((int(bin_dir.parent.name.split(".")[0]), bin_dir))
    return max(found)[1] if found else None


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by init, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def require_bin_dir() -> Path:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.fail(missing_hint("initdb", PACKAGE), pytrace=False)
    return bin_dir


@dataclass
class PgServer:
    root: Path
    bin_dir: Path
    port: int
    #: seconds from initdb to accepting connections (measured by :meth:`start`)
    startup: float = 0.0
    _names: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @classmethod
    def start(cls) -> PgServer:
        """initdb a temp dir and start a server on a free loopback port (``pg_ctl -w``)."""
        bin_dir = require_bin_dir()
        began = time.monotonic()
        root = Path(tempfile.mkdtemp(prefix="remoteler-pg-"))
        server = cls(root, bin_dir, 0)
        try:
            server.socket_dir.mkdir()
            if os.geteuid() == 0:
                entry = pwd.getpwnam(OS_USER)
                for path in (root, server.socket_dir):
                    os.chown(path, entry.pw_uid, entry.pw_gid)
            server._run(
                "initdb",
                "-D",
                str(server.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            )
            (server.data / "pg_hba.conf").write_text(_HBA)
            for attempt in range(3):
                server.port = free_port()
                try:
                    server._pg_ctl_start()
                    break
                except subprocess.CalledProcessError:
                    if attempt == 2:
                        raise
            server.psql(f"CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'")
        except BaseException:
            server.stop()
            raise
        server.startup = time.monotonic() - began
        return server

    def _command(self, tool: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / tool), *args]
        if os.geteuid() == 0:
            return ["runuser", "-u", OS_USER, "--", *argv]
        return argv

    def _run(self, tool: str, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(
            self._command(tool, *args),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
        )
        if proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, proc.args, proc.stdout, proc.stderr
            )
        return proc.stdout

    def _pg_ctl_start(self) -> None:
        options = (
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        log = self.root / "server.log"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(log), "-w", "start")

    def pid(self) -> int | None:
        """The postmaster's pid (first line of postmaster.pid), or None if not running."""
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m immediate``, then its pid) and remove its files."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop", timeout=20)
            if alive(pid):  # pg_ctl failed
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the unix socket; its output (unaligned, tuples only)."""
        return self._run(
            "psql",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            SUPERUSER,
            "-d",
            database,
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
            "-c",
            sql,
        )

    def new_database(self, *, password: bool = False) -> str:
        """A new, empty database; its URL (never with a password in it).

        With ``password``, it is owned by :data:`PASSWORD_USER` and the URL names that
        user, who must give :data:`PASSWORD` (a password file or ``PGPASSFILE``).
        """
        name = f"t_{os.getpid()}_{next(self._names)}"
        owner = PASSWORD_USER if password else SUPERUSER
        self.psql(f"CREATE DATABASE {name} OWNER {owner}")
        return self.url(name, owner)
