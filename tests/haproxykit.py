"""A throw-away HAProxy for tests: a TCP load balancer in front of several hubs.

::

    with HAProxy.start(["127.0.0.1:4001", "127.0.0.1:4002"]) as lb:
        dial(lb.addr)                       # "127.0.0.1:PORT", round robin over the hubs
        lb.set_backends([...])              # add or remove hubs (graceful reload)

``mode tcp`` passthrough: HAProxy copies bytes and never terminates TLS, so a
client's handshake (and its client certificate) reaches the hub unchanged, as in
a production cluster behind a layer-4 balancer. Every connection reaches a hub
from HAProxy's own address (127.0.0.1; no PROXY protocol). A plain TCP connect
check every 300 ms takes a dead hub out of the rotation within about a second
(``fall 1``; back in after two good checks, ``rise 2``); until then ``retries 3``
with ``option redispatch`` sends a connect that the dead hub refuses to another
hub, so the client never sees the refusal. A hub restarted on the same port needs
no change here.

HAProxy runs in master-worker mode (``-W -db``) in the foreground, as a child of
the test: the master's pid is the :class:`subprocess.Popen`'s, a reload
(:meth:`HAProxy.set_backends`) re-executes the master in place (same pid) and
forks a new worker while the old one finishes its connections, and SIGTERM to the
master stops every worker, old ones included (:meth:`HAProxy.stop`). Its log (its
own notices and one ``tcplog`` line per connection) goes to stdout/stderr, which
are the file :attr:`HAProxy.log_path` in its temp dir, never syslog; failures
quote its tail. No ``user``, ``group`` or ``chroot``: it runs as whoever runs
the tests, root included.

Debian's ``haproxy`` package provides it (.ci/run installs it); missing, the test
fails with one line naming it (tests/require.py).
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import pytest
from helpers import free_port
from pgkit import alive
from require import find_binary, missing_hint

#: The Debian package with the haproxy binary (.ci/run installs it).
PACKAGE = "haproxy"
#: Where Debian puts it (not on a non-root user's PATH).
SBIN_PATH = "/usr/sbin/haproxy"
#: Connections at once (each takes two file descriptors).
MAX_CONNECTIONS = 8192
#: Seconds to wait for a start, a reload or a stop.
WAIT = 15.0

_CONFIG = """\
# Written by tests/haproxykit.py.
global
    log stdout format raw local0
    nbthread 1
    maxconn {maxconn}

defaults
    mode tcp
    log global
    option tcplog
    # A connect refused by a dead hub is retried on another one.
    retries 3
    option redispatch
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h

listen hubs
    bind 127.0.0.1:{port}
    balance roundrobin
    # Plain TCP connect checks: a dead hub leaves the rotation after one failure.
    default-server check inter 300ms fall 1 rise 2
{servers}"""


class HAProxyError(Exception):
    """HAProxy did not start or reload; the message ends with its log's tail."""


def require_haproxy() -> str:
    """The haproxy binary's path; missing, fail the test with one line naming the package."""
    found = find_binary("haproxy")
    if found is None and os.access(SBIN_PATH, os.X_OK):
        found = SBIN_PATH
    if found is None:
        pytest.fail(missing_hint("haproxy", PACKAGE), pytrace=False)
    return found


def _split(backend: str) -> tuple[str, int]:
    host, sep, port = backend.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"backend {backend!r} is not HOST:PORT")
    return host, int(port)


def render_config(backends: Sequence[str], port: int) -> str:
    """The configuration for ``backends`` ("HOST:PORT" each) behind ``127.0.0.1:port``."""
    servers = "".join(
        f"    server hub{i} {host}:{bport}\n"
        for i, (host, bport) in enumerate(_split(b) for b in backends)
    )
    return _CONFIG.format(maxconn=MAX_CONNECTIONS, port=port, servers=servers)


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (the master's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[-1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _listening(port: int) -> bool:
    """Whether a socket listens on 127.0.0.1:``port`` (without connecting to it)."""
    want = f"0100007F:{port:04X}"
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(fields[1] == want and fields[3] == "0A" for fields in map(str.split, lines))


class HAProxy:
    """One HAProxy master (and its workers) with a config in its own temp dir.

    Make one with :meth:`start`; :meth:`stop` (or leaving the ``with`` block)
    ends every process it started and removes the temp dir.
    """

    def __init__(self, root: Path, binary: str, port: int, backends: Sequence[str]) -> None:
        self.root = root
        self.binary = binary
        self.port = port
        self.backends = list(backends)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "haproxy.cfg"

    @property
    def log_path(self) -> Path:
        return self.root / "haproxy.log"

    @property
    def master_socket(self) -> Path:
        return self.root / "master.sock"

    @property
    def addr(self) -> str:
        """Where clients dial: ``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The master's pid (the same across reloads)."""
        if self.proc is None:
            raise HAProxyError("HAProxy is not running")
        return self.proc.pid

    @classmethod
    def start(cls, backends: Sequence[str], *, port: int | None = None) -> HAProxy:
        """Start HAProxy on ``127.0.0.1:port`` (default: a free port) in front of
        ``backends`` ("HOST:PORT" each); return once it listens.

        Raises :class:`HAProxyError` if it does not come up (say, ``port`` is taken).
        """
        binary = require_haproxy()
        for backend in backends:
            _split(backend)
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            root = Path(tempfile.mkdtemp(prefix="remoteler-haproxy-"))
            lb = cls(root, binary, port if port is not None else free_port(), backends)
            try:
                lb._launch()
                return lb
            except HAProxyError:
                lb.stop()
                if attempt == attempts - 1:
                    raise
            except BaseException:
                lb.stop()
                raise
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        self.config_path.write_text(render_config(self.backends, self.port))
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "-W",
                    "-db",
                    "-f",
                    str(self.config_path),
                    "-S",
                    str(self.master_socket),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
            )
        self._wait(lambda: bool(self._workers()) and _listening(self.port), "to listen")

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not ready():
            if self.proc is None or self.proc.poll() is not None:
                raise HAProxyError(f"haproxy exited before starting {what}{self._tail()}")
            if time.monotonic() > deadline:
                raise HAProxyError(f"haproxy did not come {what} in {WAIT:.0f}s{self._tail()}")
            time.sleep(0.02)

    def _tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "; its log ends:\n" + "\n".join(text.splitlines()[-lines:])

    def log(self) -> str:
        """Everything HAProxy wrote so far (notices, check results, one line per connection)."""
        return self.log_path.read_text(errors="replace")

    def _master_cli(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.master_socket))
            sock.sendall(command.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)  # the master CLI answers, then closes
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _proc_table(self) -> tuple[list[int], int]:
        """The current workers' pids and the master's failed-reload count (``show proc``)."""
        try:
            text = self._master_cli("show proc")
        except OSError:
            return [], 0
        workers: list[int] = []
        failed = 0
        section = ""
        for line in text.splitlines():
            if line.startswith("#"):
                section = line
                continue
            fields = line.split()
            if len(fields) < 2:
                continue
            if fields[1] == "master" and "[failed:" in line:
                failed = int(line.split("[failed:", 1)[1].split("]", 1)[0])
            elif fields[1] == "worker" and section == "# workers":
                workers.append(int(fields[0]))
        return workers, failed

    def command(self, line: str) -> str:
        """Run one runtime API command on the current worker (through the master CLI,
        ``@1``), e.g. ``show stat`` or ``disable health hubs/hub0``; its answer.

        The proxy is ``hubs``; its servers are ``hub0``, ``hub1``... in the order of
        :attr:`backends`.
        """
        return self._master_cli(f"@1 {line}")

    def server_states(self) -> dict[str, str]:
        """Each backend ("HOST:PORT") and its state as the current worker sees it:
        ``UP``, ``DOWN``, ``UP 1/2`` (coming back), ``MAINT``..."""
        lines = self.command("show stat").splitlines()
        if not lines or not lines[0].startswith("# "):
            raise HAProxyError(f"unexpected 'show stat' answer: {lines[:2]}")
        header = lines[0][2:].split(",")
        name, status = header.index("svname"), header.index("status")
        states = {}
        for row in csv.reader(lines[1:]):
            if len(row) > status and row[name].startswith("hub") and row[name][3:].isdigit():
                states[self.backends[int(row[name][3:])]] = row[status]
        return states

    def _workers(self) -> list[int]:
        return self._proc_table()[0]

    def worker_pids(self) -> list[int]:
        """Every worker process of the master now (current and draining old ones)."""
        return _children(self.pid)

    def set_backends(self, backends: Sequence[str]) -> None:
        """Balance over ``backends`` from now on: rewrite the config and reload.

        Graceful: the master re-executes with the new config and forks a new worker;
        connections already open stay on the old worker until they close. Returns
        once the new worker runs. A hub restarted on the same port needs no call.
        Raises :class:`ValueError` on a bad backend (the running config is kept).
        """
        for backend in backends:
            _split(backend)
        text = render_config(backends, self.port)
        candidate = self.root / "haproxy.cfg.new"
        candidate.write_text(text)
        check = subprocess.run(
            [self.binary, "-c", "-q", "-f", str(candidate)],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        if check.returncode != 0:
            raise ValueError(f"haproxy rejects the config: {check.stdout}{check.stderr}".strip())
        old, failed = self._proc_table()
        if not old:
            raise HAProxyError(f"haproxy has no worker to reload{self._tail()}")
        candidate.replace(self.config_path)
        os.kill(self.pid, signal.SIGUSR2)  # the master re-executes itself with -sf OLD

        def reloaded() -> bool:
            workers, now_failed = self._proc_table()
            if now_failed > failed:
                raise HAProxyError(f"haproxy failed to reload{self._tail()}")
            return bool(workers) and not set(workers) & set(old)

        self._wait(reloaded, "back after a reload")
        self.backends = list(backends)

    def stop(self) -> None:
        """SIGTERM the master (it stops every worker), wait, SIGKILL what is left by
        pid; remove the temp dir. Safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is not None:
            pids = [proc.pid, *_children(proc.pid)]
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=WAIT)
            deadline = time.monotonic() + WAIT
            while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
                time.sleep(0.02)
            for pid in pids:
                if alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=WAIT)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> HAProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
