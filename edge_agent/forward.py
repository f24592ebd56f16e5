"""Local port forwarding on the embedded SSH server (RFC 4254 §7.2, ``direct-tcpip``).

``ssh -L`` / ``tsh ssh -L`` ask the node to open a TCP connection to a host and
port *as seen from the device* and relay it over an SSH channel. A request is
served when both agree:

- the certificate carries ``permit-port-forwarding`` (PROTOCOL.certkeys; the
  hub drops it when a role of the user sets ``port_forwarding = false``), and
- the rules signed into the certificate grant ``port_forwarding`` for this
  login on this node (:func:`edge_agent.authz.connection_permissions`).

The destination is any host:port the device can reach, as OpenSSH's
``AllowTcpForwarding local``. asyncssh refuses a certificate without the
extension on its own, silently; :class:`ForwardGate` takes that check over so
every refusal carries a reason for the user and a ``port.forward`` audit event.

Audit: ``port.forward`` (durable before the channel opens, or with
``allowed=False`` and the reason), then ``port.forward.end`` with the bytes each
way when the forwarded connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import asyncssh

from edge_agent.authz import connection_permissions
from edge_agent.outbox import QuotaExceeded
from remoteler.access import Permissions
from remoteler.audit.events import EventType

if TYPE_CHECKING:
    from edge_agent.audit import AgentAudit

log = logging.getLogger("remoteler.agent.forward")

#: How long the device tries to reach a destination before refusing the channel.
CONNECT_TIMEOUT = 10.0
_PERMISSION = "port-forwarding"  # asyncssh's name for permit-port-forwarding


def forward_refusal(
    perms: Permissions, cert_permits: bool, login: str, host: str, port: int
) -> str | None:
    """None if ``login`` may forward to ``host:port`` from this node; else the reason.

    The reason goes to the user as is: it names no internal detail.
    """
    if not cert_permits:
        return (
            "port forwarding is not permitted by your certificate "
            "(a role of yours sets port_forwarding = false)"
        )
    if not perms.port_forwarding:
        return f"port forwarding is not permitted for login {login!r} on this node by your roles"
    if not host or not 0 < port <= 65535:
        return f"bad forwarding destination {host!r} port {port}"
    return None


class _Flow:
    """Byte counts of one forwarded connection; reports ``port.forward.end`` once."""

    def __init__(self, gate: ForwardGate, host: str, port: int) -> None:
        self.gate = gate
        self.host = host
        self.port = port
        self.started = time.time()
        self.bytes_in = 0  # client -> destination
        self.bytes_out = 0  # destination -> client
        self._done = False

    def discard(self) -> None:
        """The forward never opened: no ``port.forward.end``."""
        self._done = True

    def finish(self) -> None:
        if self._done:
            return
        self._done = True
        self.gate._emit(
            EventType.PORT_FORWARD_END,
            host=self.host,
            port=self.port,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            duration=round(time.time() - self.started, 3),
        )


class _Destination(asyncio.Protocol):
    """The device's TCP connection to the destination; paused until the channel opens."""

    def __init__(self, flow: _Flow) -> None:
        self.flow = flow
        self.transport: asyncio.Transport | None = None
        self.channel: Any = None
        self.opened = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.pause_reading()  # resumed by _Channel.connection_made

    def close_if_unopened(self) -> None:
        """asyncssh drops a session whose SSH connection closed before the channel opened."""
        if not self.opened and self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.flow.bytes_out += len(data)
        if self.channel is not None:
            with contextlib.suppress(BrokenPipeError):  # the client closed meanwhile
                self.channel.write(data)

    def eof_received(self) -> bool:
        if self.channel is not None:
            with contextlib.suppress(BrokenPipeError):
                self.channel.write_eof()
        return True  # half-close: the client may still send

    def pause_writing(self) -> None:
        if self.channel is not None:
            self.channel.pause_reading()

    def resume_writing(self) -> None:
        if self.channel is not None:
            self.channel.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        self.flow.finish()


class _Channel(asyncssh.SSHTCPSession[bytes]):
    """The SSH side: bytes from the client go to the destination, with flow control both ways."""

    def __init__(self, dest: _Destination) -> None:
        self.dest = dest

    def connection_made(self, chan: Any) -> None:
        self.dest.channel = chan
        self.dest.opened = True
        assert self.dest.transport is not None
        self.dest.transport.resume_reading()

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.dest.flow.bytes_in += len(data)
        assert self.dest.transport is not None
        self.dest.transport.write(data)

    def eof_received(self) -> bool:
        transport = self.dest.transport
        if transport is not None and transport.can_write_eof():
            transport.write_eof()
            return True
        return False

    def pause_writing(self) -> None:
        if self.dest.transport is not None:
            self.dest.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.dest.transport is not None:
            self.dest.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.dest.channel = None
        if self.dest.transport is not None:
            self.dest.transport.close()
        self.dest.flow.finish()


class ForwardGate:
    """Decides and serves the ``direct-tcpip`` requests of one SSH connection.

    Create it in ``SSHServer.connection_made`` (it replaces asyncssh's own
    certificate check for port forwarding, see the module docstring) and call
    :meth:`open` from ``SSHServer.connection_requested``.
    """

    def __init__(self, conn: Any, audit: AgentAudit | None, session_id: str) -> None:
        self._conn = conn
        self._audit = audit
        self._session_id = session_id
        self._login = ""
        original: Callable[[str], bool] = conn.check_certificate_permission
        self._cert_permits = partial(original, _PERMISSION)

        def check(permission: str) -> bool:
            return True if permission == _PERMISSION else bool(original(permission))

        conn.check_certificate_permission = check

    def _emit(self, type: EventType, **fields: Any) -> None:
        if self._audit is not None:
            self._audit.emit_nowait(type, **self._who(), **fields)

    def _who(self) -> dict[str, str]:
        user = str(self._conn.get_extra_info("remoteler_user", "") or "")
        return {"user": user, "login": self._login, "session_id": self._session_id}

    def open(self, login: str, host: str, port: int) -> Any:
        """A coroutine giving the channel's session; raise ChannelOpenError when refused."""
        self._login = login
        reason = forward_refusal(
            connection_permissions(self._conn), self._cert_permits(), login, host, port
        )
        if reason is not None:
            log.info("port forward refused: %s", reason, extra={**self._who(), "host": host})
            shown = port if 0 <= port <= 65535 else 0  # the wire allows a uint32
            self._emit(EventType.PORT_FORWARD, host=host, port=shown, allowed=False, reason=reason)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)
        return self._connect(host, port)

    async def _connect(self, host: str, port: int) -> _Channel:
        flow = _Flow(self, host, port)
        dest = _Destination(flow)
        loop = asyncio.get_running_loop()
        try:
            if self._audit is not None:
                self._audit.check_room()
            await asyncio.wait_for(
                loop.create_connection(lambda: dest, host, port), CONNECT_TIMEOUT
            )
        except QuotaExceeded as exc:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_RESOURCE_SHORTAGE, str(exc)) from None
        except (OSError, TimeoutError) as exc:
            why = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or "unreachable"
            reason = f"the node cannot connect to {host} port {port}: {why}"
            self._emit(EventType.PORT_FORWARD, host=host, port=port, allowed=False, reason=reason)
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason) from None
        if self._audit is not None:
            # Durable before the channel opens, as session.start is before a command runs.
            try:
                await self._audit.emit(
                    EventType.PORT_FORWARD, **self._who(), host=host, port=port, allowed=True
                )
            except BaseException as exc:
                flow.discard()
                assert dest.transport is not None
                dest.transport.close()
                if isinstance(exc, QuotaExceeded):
                    raise asyncssh.ChannelOpenError(
                        asyncssh.OPEN_RESOURCE_SHORTAGE, str(exc)
                    ) from None
                raise
        log.info("port forward open", extra={**self._who(), "host": host, "port": port})
        loop.call_later(CONNECT_TIMEOUT, dest.close_if_unopened)
        return _Channel(dest)  # asyncssh makes the channel (RFC 4254 §7.2)
