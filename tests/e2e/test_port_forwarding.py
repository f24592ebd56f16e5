"""``tsh ssh -N -L`` through the hub to a service on the device, allowed and refused."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import BIN, Cluster, free_port, stop_process, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name
OPENSSH = shutil.which("ssh") is not None  # else the OpenSSH -L cases are left out
PAYLOAD = os.urandom(300_000) + b"hello through the tunnel"

NO_FORWARDING = """\
kind = "role"
name = "access"
[allow]
logins = ["{{internal.logins}}"]
node_labels = { "*" = "*" }
[permissions]
port_forwarding = false
"""


class _Upper(socketserver.StreamRequestHandler):
    """Reads until EOF, answers with the same bytes upper-cased (both directions, half-close)."""

    def handle(self) -> None:
        assert isinstance(self.server, _Server)
        self.server.connections += 1
        self.wfile.write(self.rfile.read().upper())


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = False
    connections = 0


@pytest.fixture
def service() -> Iterator[Any]:
    """A TCP service on the 'device' (this machine), loopback only."""
    server = _Server(("127.0.0.1", 0), _Upper)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _forward(cluster: Cluster, err: Path, argv: list[str]) -> subprocess.Popen[Any]:
    """Start ``argv`` (tsh ssh or ssh with -N -L), stderr to ``err``; the caller stops it."""
    with open(err, "wb") as stderr:  # the child keeps its own copy
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=cluster.env(),
        )


def _tsh_forward(spec: str, *command: str) -> list[str]:
    no_command = [] if command else ["-N"]
    return [str(BIN / "tsh"), "ssh", *no_command, "-L", spec, f"{ME}@dev1", *command]


def _openssh_forward(cluster: Cluster, tmp_path: Path, spec: str) -> list[str]:
    """Plain OpenSSH through 'tsh proxy ssh', with the config 'tsh config' prints."""
    config = tmp_path / "ssh_config"
    config.write_text(cluster.tsh("config").stdout)
    name = json.loads(cluster.tsh("status", "--format", "json").stdout)["cluster"]
    options = ["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]
    return ["ssh", "-F", str(config), *options, "-N", "-L", spec, f"{ME}@dev1.{name}"]


def _through(cluster: Cluster, err: Path, argv: list[str], port: int, data: bytes) -> bytes:
    """What the service answers to ``data`` sent to the forwarded local ``port``."""
    proc = _forward(cluster, err, argv)
    try:
        wait_for(lambda: proc.poll() is not None or _listening(port), what=f"{argv[0]} -L")
        assert proc.poll() is None, err.read_text()
        return _exchange(port, data)
    finally:
        stop_process(proc)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # ssh resets a refused connection that sent data
            pass
    return b"".join(chunks)


def _events(cluster: Cluster, type: str, want: Any) -> list[Any]:
    def ready() -> list[Any] | None:
        found = [e for e in cluster.tctl_json("audit", "search", "--type", type) if want(e)]
        return found or None

    return list(wait_for(ready, timeout=20, what=f"{type} at the hub"))


def test_forward_reaches_a_device_service_then_refused_when_a_role_says_no(
    cluster: Cluster, service: Any, tmp_path: Path
) -> None:
    target = service.server_address[1]
    cluster.add_user("alice", [ME])
    cluster.start_agent("dev1", "env=lab")
    wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
    assert cluster.login("alice").returncode == 0

    err = tmp_path / "forward.err"
    local = free_port()
    spec = f"{local}:127.0.0.1:{target}"
    assert _through(cluster, err, _tsh_forward(spec), local, PAYLOAD) == PAYLOAD.upper()
    with_command = _tsh_forward(spec, "sleep 30")  # forwarding while a command runs
    assert _through(cluster, err, with_command, local, b"second") == b"SECOND"
    if OPENSSH:
        argv = _openssh_forward(cluster, tmp_path, spec)
        assert _through(cluster, err, argv, local, PAYLOAD) == PAYLOAD.upper()

    def mine(e: Any) -> bool:
        return bool(e["user"] == "alice" and e["fields"]["port"] == target)

    opened = _events(cluster, "port.forward", mine)
    assert opened[0]["login"] == ME and opened[0]["node"]
    assert opened[0]["fields"]["host"] == "127.0.0.1" and opened[0]["fields"]["allowed"] is True
    ends = _events(cluster, "port.forward.end", lambda e: mine(e) and e["fields"]["bytes_in"] > 6)
    assert (ends[0]["fields"]["bytes_in"], ends[0]["fields"]["bytes_out"]) == (
        len(PAYLOAD),
        len(PAYLOAD),
    )

    # A role with port_forwarding = false vetoes it for the next certificate.
    role = tmp_path / "no-forwarding.toml"
    role.write_text(NO_FORWARDING)
    cluster.tctl("create", "-f", str(role))
    assert cluster.login("alice", offset_steps=1).returncode == 0  # a fresh TOTP step
    before = service.connections
    # tsh reads the veto from its own certificate: it fails at once, binding nothing.
    early = subprocess.run(
        _tsh_forward(spec), capture_output=True, text=True, env=cluster.env(), timeout=60
    )
    assert early.returncode == 255 and not _listening(local)
    assert early.stderr == (
        "tsh: -L refused: port forwarding is off: your role 'access' sets port_forwarding = false\n"
    )
    if OPENSSH:  # the device refuses too, whatever the client (and records it)
        argv = _openssh_forward(cluster, tmp_path, spec)
        assert _through(cluster, err, argv, local, b"refused?") == b""
        message = err.read_text()
        assert "administratively prohibited: port forwarding is not permitted" in message
        refused = _events(cluster, "port.forward", lambda e: e["fields"].get("allowed") is False)
        assert refused[0]["user"] == "alice" and refused[0]["fields"]["port"] == target
        assert "port_forwarding = false" in refused[0]["fields"]["reason"]
    assert service.connections == before, "nothing reached the service"
