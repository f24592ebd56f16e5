"""Processes the benchmarks measure: a hub with an agent, a direct asyncssh server, sshd.

Everything listens on 127.0.0.1 and is stopped by process id when the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fleet import provision as provision
from helpers import BIN, Cluster, free_port, stop_process, wait_for
from require import find_binary, missing_hint

from bench.harness import MissingTool
from remoteler.errors import RemotelerError
from remoteler.hubconn import rpc_call
from remoteler.identity import read_identity_file
from remoteler.tlsutil import client_context

LOGIN = pwd.getpwuid(os.geteuid()).pw_name
NODE = "bench-node"
SSHD = find_binary("sshd") or "/usr/sbin/sshd"


@dataclass
class Rig:
    cluster: Cluster
    identity: Path  # tctl auth sign output, for the direct client

    def tsh(self, *args: str) -> list[str]:
        return [str(BIN / "tsh"), *args]


def pin_once(cluster: Cluster) -> None:
    """Ask ``tctl`` for the CA pin once: every agent start and ``tsh login`` reuse it
    (no rotation runs in a benchmark)."""
    pin = cluster.ca_pin()
    cluster.ca_pin = lambda: pin  # type: ignore[method-assign]


def node_online(cluster: Cluster, identity: Path, node: str = NODE) -> bool:
    """Whether the hub routes to ``node`` now: its live view (``nodes.list``, what ``tsh
    ls`` shows), asked from this process with ``identity`` (``tctl auth sign``).

    ``Cluster.node_online`` asks ``tctl``, which shows the stored state: a new tunnel
    gets there at the hub's next presence flush, up to 5 s later, and each poll costs
    a whole process.
    """
    ident = read_identity_file(identity)
    ctx = client_context(ident.host_ca_pem, ident.tls_cert, ident.key_pem)
    try:
        nodes = asyncio.run(rpc_call(cluster.addr, ctx, "nodes.list", labels={}))
    except (RemotelerError, OSError):
        return False
    return any(n["name"] == node and n["online"] for n in nodes)


@contextlib.contextmanager
def hub_rig(workdir: Path) -> Iterator[Rig]:
    cluster = Cluster(workdir / "cluster", free_port())
    cluster.root.mkdir(parents=True, exist_ok=True)
    cluster.start_hub()
    try:
        pin_once(cluster)
        cluster.start_agent(NODE, "env=bench")  # it joins while the user is made
        cluster.add_user("bench", [LOGIN])
        identity = workdir / "bench-id"
        cluster.tctl("auth", "sign", "--user", "bench", "--ttl", "1h", "-o", str(identity))
        login = cluster.login("bench")
        if login.returncode != 0:
            raise RuntimeError(f"bench login failed: {login.stderr}")
        wait_for(lambda: node_online(cluster, identity), what="bench node online")
        os.environ["TSH_HOME"] = str(cluster.tsh_home)
        yield Rig(cluster, identity)
    finally:
        cluster.stop()


@contextlib.contextmanager
def direct_server(rig: Rig) -> Iterator[int]:
    """The agent's own SSH server code, on a loopback TCP port instead of the tunnel."""
    port_file = rig.cluster.root / "direct.port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.direct_ssh",
            "--agent-data",
            str(rig.cluster.root / f"agent-{NODE}"),
            "--port-file",
            str(port_file),
        ],
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        wait_for(port_file.exists, what="direct ssh server")
        yield int(port_file.read_text())
    finally:
        stop_process(proc)


def direct_client(rig: Rig, port: int, command: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.direct_client",
        "--identity",
        str(rig.identity),
        "--port",
        str(port),
        f"{LOGIN}@{NODE}",
        command,
    ]


@dataclass
class Sshd:
    port: int
    key: Path

    def ssh(self, command: str, cipher: str | None = None) -> list[str]:
        args = [
            "ssh",
            "-p",
            str(self.port),
            "-i",
            str(self.key),
            "-F",
            "/dev/null",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "BatchMode=yes",
        ]
        if cipher:
            args += ["-c", cipher]
        return [*args, f"{LOGIN}@127.0.0.1", command]


def require_openssh() -> None:
    """Raise :class:`MissingTool` naming the package if sshd, ssh or ssh-keygen is
    missing: the OpenSSH reference rows are part of the figures, never left out."""
    for tool in ("sshd", "ssh", "ssh-keygen"):
        if find_binary(tool) is None:
            raise MissingTool(f"the OpenSSH reference rows need {tool}: {missing_hint(tool)}")


@contextlib.contextmanager
def openssh_server(workdir: Path) -> Iterator[Sshd]:
    """OpenSSH's sshd on loopback (:class:`MissingTool` where it is not installed)."""
    require_openssh()
    d = workdir / "sshd"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("host", "client"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
        )
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    Path("/run/sshd").mkdir(exist_ok=True)
    port = free_port()
    config = d / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "UsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nLogLevel ERROR\n"
    )
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    try:
        server = Sshd(port, d / "client")
        deadline = time.monotonic() + 10
        while subprocess.run(server.ssh("true"), capture_output=True).returncode != 0:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("sshd did not come up")
            time.sleep(0.1)
        yield server
    finally:
        stop_process(proc)


@contextlib.contextmanager
def storage_engine() -> Iterator[tuple[str, Callable[[], str | None]]]:
    """The hub storage engine ``BENCH_STORAGE`` names (``sqlite``, the default, or
    ``postgresql``) and a maker of fresh ``--storage`` values: None (SQLite in the data
    dir) or a new database on a throw-away PostgreSQL (tests/pgkit.py), started here
    and stopped after."""
    engine = os.environ.get("BENCH_STORAGE", "sqlite")
    if engine == "sqlite":
        yield engine, lambda: None
        return
    if engine != "postgresql":
        raise SystemExit(f"BENCH_STORAGE={engine!r}: use sqlite or postgresql")
    from pgkit import PgServer

    server = PgServer.start()
    try:
        yield engine, server.new_database
    finally:
        server.stop()
