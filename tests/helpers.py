"""Real processes on loopback for end-to-end tests: hub, agents, tctl, tsh.

Every process a test starts is stopped by the test, by its process id.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp

BIN = Path(sys.executable).parent
TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
PASSWORD = "correct horse battery"


#: a role that allows the serial console on every node (docs/serial-console.md)
SERIAL_ROLE = """\
kind = "role"
name = "serial"
[allow]
logins = ["{{internal.logins}}"]
node_labels = { "*" = "*" }
[permissions]
serial_console = true
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def stop_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def current_totp(secret: str = TOTP_SECRET, offset_steps: int = 0) -> str:
    return str(pyotp.TOTP(secret).at(time.time() + 30 * offset_steps))


@dataclass
class Cluster:
    root: Path
    hub_port: int
    hub: subprocess.Popen[Any] | None = None
    agents: dict[str, subprocess.Popen[Any]] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "hub"

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.hub_port}"

    @property
    def tsh_home(self) -> Path:
        return self.root / "tsh"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env.update(TSH_HOME=str(self.tsh_home), REMOTELER_HUB_DATA=str(self.data))
        env.update(extra)
        return env

    def start_hub(self, *extra: str) -> None:
        log = self.root / "hub.log"
        self.logs.append(log)
        addr_file = self.data / "hub.addr"
        addr_file.unlink(missing_ok=True)
        self.hub = subprocess.Popen(
            [
                str(BIN / "hub"),
                "start",
                "--data-dir",
                str(self.data),
                "--listen",
                self.addr,
                *extra,
            ],
            stdout=open(log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env=self.env(),
        )
        wait_for(addr_file.exists, what="hub to listen")

    def kill_hub(self, sig: int = signal.SIGKILL) -> None:
        assert self.hub is not None
        stop_process(self.hub, sig)
        self.hub = None

    def tctl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(BIN / "tctl"), "--data-dir", str(self.data), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=60,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"tctl {args} failed: {proc.stderr}")
        return proc

    def tctl_json(self, *args: str) -> Any:
        return json.loads(self.tctl(*args, "--format", "json").stdout)

    def ca_pin(self) -> str:
        return str(self.tctl_json("status")["ca_pin"])

    def token(self, *extra: str) -> str:
        return str(self.tctl_json("tokens", "add", "--type", "node", *extra)["token"])

    def add_user(self, name: str, logins: Sequence[str], roles: str = "access") -> None:
        self.tctl(
            "users",
            "add",
            name,
            "--roles",
            roles,
            "--logins",
            ",".join(logins),
            "--password-stdin",
            "--totp-secret",
            TOTP_SECRET,
            input=PASSWORD + "\n",
        )

    def start_agent(
        self,
        name: str,
        labels: str = "",
        token: str | None = None,
        *extra: str,
        hub: str | None = None,
        wrapper: Sequence[str] = (),
    ) -> subprocess.Popen[Any]:
        """Start (and on the first start, join) an agent; ``hub`` dials another address
        than the hub's own, e.g. a fault proxy in front of it (kept for later starts);
        ``wrapper`` is a command the agent runs under, which must exec it (same pid)."""
        log = self.root / f"agent-{name}.log"
        self.logs.append(log)
        args = [
            *wrapper,
            str(BIN / "edge-agent"),
            "start",
            "--data-dir",
            str(self.root / f"agent-{name}"),
            "--name",
            name,
            "--labels",
            labels,
            "--reconnect-max",
            "1",
            *extra,
        ]
        env = self.env()
        if not (self.root / f"agent-{name}" / "identity" / "node.json").exists():
            args += ["--hub", hub or self.addr, "--ca-pin", self.ca_pin()]
            # As the docs say: the token in the environment, not on the command line.
            env["REMOTELER_JOIN_TOKEN"] = token or self.token()
        proc = subprocess.Popen(
            args,
            stdout=open(log, "ab"),  # noqa: SIM115 - the child keeps it
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.agents[name] = proc
        return proc

    def node_online(self, name: str) -> bool:
        nodes = self.tctl_json("nodes", "ls")
        return any(n["name"] == name and n["online"] for n in nodes)

    def tsh(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "tsh"), *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=env or self.env(),
            timeout=timeout,
        )

    def login(
        self, user: str, *extra: str, offset_steps: int = 0
    ) -> subprocess.CompletedProcess[str]:
        return self.tsh(
            "login",
            "--proxy",
            self.addr,
            "--user",
            user,
            "--ca-pin",
            self.ca_pin(),
            "--otp",
            current_totp(offset_steps=offset_steps),
            *extra,
            input=PASSWORD + "\n",
        )

    def stop(self) -> None:
        for proc in self.agents.values():
            stop_process(proc)
        if self.hub is not None:
            stop_process(self.hub)
            self.hub = None

    def all_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())
