"""Which serial ports a console may open, and who holds each one (sans-I/O).

Only ports the device operator named (``edge-agent start --serial-port PATH``)
are ever opened; a user names one of them, never an arbitrary device path. A
port has at most one writer; read-only viewers may share it with the writer
and with each other. Nothing here touches a port: :mod:`edge_agent.serial_console`
opens it once the claim succeeded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from remoteler.console import DEFAULT_BAUD, ENV_BAUD, ENV_MODE, ENV_PORT, Mode, parse_baud
from remoteler.console import parse_mode as _parse_mode


class ConsoleRefused(Exception):
    """The console cannot open; the message is for the user (no internal detail)."""


@dataclass(frozen=True)
class ConsoleRequest:
    """What a console session asked for, checked against the operator's ports."""

    #: one of the operator's port paths
    port: str
    #: the requested rate (a viewer joining an open port gets the port's current rate)
    baud: int
    mode: Mode


@dataclass(frozen=True)
class Holder:
    """Who holds a port: shown to a second writer who is refused."""

    user: str
    login: str
    #: distinguishes two sessions of the same user
    session_id: str
    since: float = field(default_factory=time.time)

    def describe(self) -> str:
        when = time.strftime("%H:%M:%S UTC", time.gmtime(self.since))
        return f"{self.user or '?'} (login {self.login}, since {when})"


@dataclass
class _Port:
    writer: Holder | None = None
    viewers: list[Holder] = field(default_factory=list)


def normalize_ports(paths: Iterable[str]) -> list[str]:
    """The operator's ``--serial-port`` list, checked: absolute paths, no duplicates."""
    out: list[str] = []
    for path in paths:
        if not path.startswith("/"):
            raise ValueError(f"--serial-port {path!r} must be an absolute path like /dev/ttyUSB0")
        clean = os.path.normpath(path)
        if clean not in out:
            out.append(clean)
    return out


class PortTable:
    """The operator's ports and their claims; one per agent, shared by all connections."""

    def __init__(self, ports: Iterable[str] = ()) -> None:
        self.ports = normalize_ports(ports)
        self._claims = {p: _Port() for p in self.ports}

    def resolve(self, name: str) -> str:
        """The port ``name`` means: a configured path, or its basename (``ttyUSB0``)."""
        if not self.ports:
            raise ConsoleRefused(
                "this device has no serial console ports "
                "(its operator can add them with 'edge-agent start --serial-port PATH')"
            )
        if not name:
            if len(self.ports) == 1:
                return self.ports[0]
            raise ConsoleRefused(
                f"this device has several serial ports; pick one with --port: "
                f"{', '.join(self.ports)}"
            )
        for port in self.ports:
            if name in (port, os.path.basename(port)):
                return port
        raise ConsoleRefused(
            f"serial port {name[:64]!r} is not offered by this device; "
            f"it offers {', '.join(self.ports)} ('tsh ls -v' lists them)"
        )

    def parse_request(self, env: Mapping[str, str]) -> ConsoleRequest:
        """The console a session's environment asks for; ConsoleRefused if it is unusable."""
        try:
            baud = parse_baud(env[ENV_BAUD]) if env.get(ENV_BAUD) else DEFAULT_BAUD
            mode = _parse_mode(env.get(ENV_MODE) or Mode.READ_WRITE)
        except ValueError as exc:
            raise ConsoleRefused(str(exc)) from None
        return ConsoleRequest(self.resolve(env.get(ENV_PORT, "")), baud, mode)

    def claim(self, port: str, mode: Mode, holder: Holder) -> None:
        """Hold ``port``; ConsoleRefused naming the writer if a second writer asks."""
        state = self._claims[port]
        if mode is Mode.READ_ONLY:
            state.viewers.append(holder)
            return
        if state.writer is not None:
            raise ConsoleRefused(
                f"serial port {port} is in use by {state.writer.describe()}; "
                "try later, or watch with --read-only"
            )
        state.writer = holder

    def release(self, port: str, holder: Holder) -> None:
        state = self._claims.get(port)
        if state is None:
            return
        if state.writer is holder:
            state.writer = None
        state.viewers = [v for v in state.viewers if v is not holder]

    def writer(self, port: str) -> Holder | None:
        return self._claims[port].writer

    def holders(self, port: str) -> int:
        state = self._claims[port]
        return len(state.viewers) + (state.writer is not None)
