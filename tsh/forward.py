"""``tsh ssh -L``: local port forwarding through the node, as ``ssh -L``.

Each local connection opens a ``direct-tcpip`` channel (RFC 4254 §7.2) to the
node, which connects to the destination as seen from the device.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

from remoteler.errors import UsageError

#: Where a forward listens when the spec gives no bind address (ssh's GatewayPorts=no).
DEFAULT_BIND = "127.0.0.1"

# [bind:]port:host:hostport; a bind address or host may be an IPv6 address in [brackets].
_PART = r"(\[[^\]]*\]|[^:\[\]]*)"
_SPEC = re.compile(rf"(?:{_PART}:)?(\d+):{_PART}:(\d+)")


@dataclass(frozen=True)
class LocalForward:
    """One ``-L`` spec."""

    bind: str
    """Local address to listen on."""
    port: int
    """Local port (0 picks a free one)."""
    host: str
    """Destination host, as the device resolves it."""
    host_port: int
    """Destination port."""

    def __str__(self) -> str:
        return f"{self.bind}:{self.port} -> {self.host}:{self.host_port}"


def _unbracket(value: str) -> str:
    return value[1:-1] if value.startswith("[") and value.endswith("]") else value


def parse_local_forward(spec: str) -> LocalForward:
    """Read ``[bind_address:]port:host:hostport``; raise UsageError if it is not one."""
    m = _SPEC.fullmatch(spec)
    if m is None:
        raise UsageError(f"bad -L {spec!r}: give [bind_address:]port:host:hostport")
    bind, port, host, host_port = m.groups()
    bind = _unbracket(bind or "")
    if bind == "*":
        bind = ""  # ssh: every address
    elif not bind or bind == "localhost":
        bind = DEFAULT_BIND
    host = _unbracket(host)
    if not host:
        raise UsageError(f"bad -L {spec!r}: the destination host is empty")
    ports = int(port), int(host_port)
    if ports[0] > 65535 or not 0 < ports[1] <= 65535:
        raise UsageError(f"bad -L {spec!r}: ports go from 1 to 65535")
    return LocalForward(bind, ports[0], host, ports[1])


async def start_local_forwards(conn: Any, forwards: list[LocalForward]) -> list[Any]:
    """Listen for every forward; raise UsageError if a local address cannot be bound.

    A connection the node refuses is closed and its reason printed on stderr
    (asyncssh would drop it silently). Close the returned listeners when done.
    """
    import asyncssh

    create = conn.create_connection

    async def reporting(*args: Any, **kwargs: Any) -> Any:
        try:
            return await create(*args, **kwargs)
        except asyncssh.ChannelOpenError as exc:
            dest = f"{args[1]}:{args[2]}" if len(args) > 2 else "the destination"
            print(f"tsh: the node refused forwarding to {dest}: {exc.reason}", file=sys.stderr)
            raise

    conn.create_connection = reporting  # forward_local_port opens its channels through it
    listeners: list[Any] = []
    for fwd in forwards:
        try:
            listener = await conn.forward_local_port(fwd.bind, fwd.port, fwd.host, fwd.host_port)
        except OSError as exc:
            for opened in listeners:
                opened.close()
            raise UsageError(
                f"cannot listen on {fwd.bind or '*'}:{fwd.port} for -L: {exc.strerror}"
            ) from None
        listeners.append(listener)
    return listeners


#: The OpenSSH certificate extension a device requires for ``direct-tcpip``.
PERMIT_PORT_FORWARDING = "permit-port-forwarding"


def forward_refusal(
    ssh_cert: str, login: str, node: str, labels: dict[str, str] | None
) -> str | None:
    """Why the device will refuse ``-L`` for ``login`` on ``node``, or None.

    Decided as the device does (edge_agent.forward), from our own certificate:
    a role that sets ``port_forwarding = false`` (named), the certificate's
    permit-port-forwarding extension, and with the node's ``labels`` (None:
    unknown, skip) whether a role allowing this login there grants it.
    """
    from remoteler.access import RULES_EXTENSION, decide, decode_rules
    from remoteler.ca import CAError, parse_certificate

    try:
        cert = parse_certificate(ssh_cert)
        rules = decode_rules(cert.extensions.get(RULES_EXTENSION) or "")
    except (CAError, ValueError):
        return None  # the device says why; nothing to tell in advance
    vetoing = sorted({r.role for r in rules if "port_forwarding" in r.vetoes})
    if vetoing:
        return f"port forwarding is off: your role {vetoing[0]!r} sets port_forwarding = false"
    if PERMIT_PORT_FORWARDING not in cert.extensions:
        return "port forwarding is not permitted by your certificate"
    if labels is None:
        return None
    decision = decide(rules, login, labels, node=node, user=cert.key_id)
    if decision.allowed and not decision.permissions.port_forwarding:
        return (
            f"port forwarding is not permitted for login {login!r} on {node!r}: "
            "no role of yours that allows it there grants port_forwarding"
        )
    return None
