"""Several real hub processes on one PostgreSQL database, for tests of a cluster.

Hub ``i`` keeps its own data dir (``root/hub-i``), listen port and peer port for its
whole life, so a hub killed and started again comes back at the same address (as a
load balancer in front expects). ``tctl`` runs against :attr:`tctl_hub` (any hub
will do: they share the storage); ``tsh`` reaches any hub with an identity file from
``tctl auth sign`` (:meth:`HubCluster.sign`) and ``--proxy``.

Every process is stopped by the test, by its process id.
"""

from __future__ import annotations

import json
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import BIN, Cluster, free_port, stop_process, wait_for


@dataclass
class HubProc:
    index: int
    port: int
    peer_port: int
    data: Path
    proc: subprocess.Popen[Any] | None = None
    #: it listened once: its ports are known to the load balancer from then on
    started: bool = False

    @property
    def id(self) -> str:
        return f"hub-{self.index}"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class HubCluster(Cluster):
    """``Cluster``'s agents, tctl and tsh, over ``count`` hubs on ``storage_url``."""

    storage_url: str = ""
    count: int = 3
    members: list[HubProc] = field(default_factory=list)
    #: the hub tctl talks to (its data dir has the admin identity)
    tctl_hub: int = 0
    #: what agents and tsh dial by default (a load balancer's address, once set)
    front: str = ""
    hub_flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        passphrase = self.root / "ca.passphrase"
        passphrase.write_text("cluster test passphrase\n")
        passphrase.chmod(0o600)
        for i in range(self.count):
            self.members.append(HubProc(i, free_port(), free_port(), self.root / f"hub-{i}"))

    @property
    def data(self) -> Path:  # type: ignore[override]
        return self.members[self.tctl_hub].data

    @property
    def addr(self) -> str:  # type: ignore[override]
        return self.front or self.members[0].addr

    def start_hub(self, *extra: str, index: int = 0) -> None:  # type: ignore[override]
        """Start hub ``index``; on its first start, ports another test took between
        :func:`free_port` and the bind are picked again (a restart keeps its ports:
        the load balancer in front knows them)."""
        member = self.members[index]
        first = not member.started
        for attempt in range(3):
            if self._start_once(member, extra):
                return
            log = (self.root / f"hub-{index}.log").read_text(errors="replace")
            if not first or "in use" not in log or attempt == 2:
                raise AssertionError(f"hub {index} did not start: {log[-1500:]}")
            member.port, member.peer_port = free_port(), free_port()

    def _start_once(self, member: HubProc, extra: tuple[str, ...]) -> bool:
        """Start ``member``; False if it exited before it listened."""
        log = self.root / f"hub-{member.index}.log"
        if log not in self.logs:
            self.logs.append(log)
        addr_file = member.data / "hub.addr"
        addr_file.unlink(missing_ok=True)
        proc = member.proc = subprocess.Popen(
            [
                str(BIN / "hub"),
                "start",
                "--data-dir",
                str(member.data),
                "--hub-id",
                member.id,
                "--listen",
                member.addr,
                "--peer-listen",
                f"127.0.0.1:{member.peer_port}",
                "--storage",
                self.storage_url,
                "--ca-passphrase-file",
                str(self.root / "ca.passphrase"),
                *self.hub_flags,
                *extra,
            ],
            stdout=open(log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env=self.env(),
        )
        wait_for(
            lambda: addr_file.exists() or proc.poll() is not None,
            timeout=60,
            what=f"hub {member.index} to listen",
        )
        if proc.poll() is not None:
            member.proc = None
            return False
        member.started = True
        return True

    def start_all(self, *extra: str) -> None:
        self.start_hub(*extra, index=0)  # creates the CAs; the others load them
        for i in range(1, self.count):
            self.start_hub(*extra, index=i)
        wait_for(lambda: len(self.hubs()) == self.count, what="every hub registered")

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        member = self.members[index]
        assert member.proc is not None
        stop_process(member.proc, sig)
        member.proc = None
        if self.tctl_hub == index:  # tctl goes to a hub that runs
            self.tctl_hub = next(m.index for m in self.members if m.proc is not None)

    def hubs(self) -> list[dict[str, Any]]:
        return list(self.tctl_json("status")["hubs"])

    def holders(self) -> dict[str, list[str]]:
        """node name -> the hubs holding its tunnels."""
        return {n["name"]: n["hubs"] for n in self.tctl_json("nodes", "ls")}

    def sign(self, user: str, out: Path) -> Path:
        self.tctl("auth", "sign", "--user", user, "--ttl", "2h", "-o", str(out))
        return out

    def ssh(
        self, identity: Path, hub: str, target: str, *command: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.tsh(
            "-i", str(identity), "--proxy", hub, "ssh", target, *command, timeout=timeout
        )

    def stop(self) -> None:
        for proc in self.agents.values():
            stop_process(proc)
        self.agents.clear()
        for member in self.members:
            if member.proc is not None:
                stop_process(member.proc)
                member.proc = None


def status_json(cluster: HubCluster) -> dict[str, Any]:
    return dict(json.loads(cluster.tctl("status", "--format", "json").stdout))
