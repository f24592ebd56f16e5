"""Port forwarding (``ssh -L``, ``direct-tcpip``) through the recording proxy.

Each forward the user opens becomes a ``direct-tcpip`` channel on the hub's own
connection to the device, so the device decides as for any client: the embedded
server by the certificate's permit-port-forwarding and the rules' port_forwarding,
a legacy sshd by the certificate's extension and its own ``AllowTcpForwarding``.
The hub has already checked the user's certificate permits forwarding (asyncssh
refuses the channel otherwise).

Forwards are audited at the hub, not recorded (as on the agent): ``port.forward``
is stored before the device is asked, ``port.forward.end`` carries the bytes each
way. A refusal from the device reaches the user with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import asyncssh
from asyncssh.forward import SSHForwarder

from remoteler.audit.events import HUB_NODE, EventType, make_event
from remoteler.text import printable

if TYPE_CHECKING:
    from hub.recording.session import ConnState

log = logging.getLogger("remoteler.hub.recording")


class _Counted(SSHForwarder):
    """One side of a forward: counts what it receives, reports when it closes."""

    def __init__(
        self, peer: SSHForwarder | None = None, on_lost: Callable[[], None] | None = None
    ) -> None:
        super().__init__(peer)
        self.received = 0
        self._on_lost = on_lost

    def data_received(self, data: bytes, datatype: int | None = None) -> None:
        self.received += len(data)
        super().data_received(data, datatype)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._on_lost is not None:
            on_lost, self._on_lost = self._on_lost, None
            on_lost()


async def open_forward(state: ConnState, host: str, port: int) -> SSHForwarder:
    """The user's side of a forward to ``host:port`` as seen from the device.

    Raise :class:`asyncssh.ChannelOpenError` (the user sees the reason) if the
    device is unreachable, the forward cannot be audited, or the device refuses.
    """
    from hub.recording.session import UpstreamError

    store = state.audit
    if store is None:
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
            "the hub has no audit store to audit this forward in",
        )
    try:
        upstream = await state.upstream()
    except UpstreamError as exc:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, str(exc)) from None
    fields: dict[str, Any] = {
        "user": state.user,
        "login": state.login,
        "session_id": state.session_id,
        "recorded_by": "hub",
        "node_id": state.node.id,
        "node_name": state.node.name,
        "host": host,
        "port": port,
    }
    try:
        await store.record(make_event(EventType.PORT_FORWARD, node=HUB_NODE, **fields))
    except Exception as exc:
        log.error("port.forward not stored: %s", type(exc).__name__, extra={"port": port})
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_CONNECT_FAILED,
            "the hub could not audit this forward (its audit store failed); try again",
        ) from None
    started = time.time()
    sides: list[_Counted] = []  # the user's side, the device's side
    ending: list[asyncio.Future[None]] = []

    def lost() -> None:
        if len(sides) == 2 and not ending:
            ending.append(asyncio.ensure_future(end(sides[0].received, sides[1].received, "")))

    async def end(bytes_in: int, bytes_out: int, error: str) -> None:
        with contextlib.suppress(Exception):
            await store.record(
                make_event(
                    EventType.PORT_FORWARD_END,
                    node=HUB_NODE,
                    **fields,
                    bytes_in=bytes_in,
                    bytes_out=bytes_out,
                    duration=round(max(0.0, time.time() - started), 3),
                    error=error,
                )
            )

    try:
        # asyncssh's own tunnelled forwarding does the same with SSHForwarder
        # (SSHConnection.forward_tunneled_connection); its stubs type the factory as
        # returning an SSHTCPSession, which SSHForwarder implements by protocol.
        factory = cast(Any, lambda: _Counted(on_lost=lost))
        _, opened = await upstream.create_connection(factory, host, port)
        device_side = cast(_Counted, opened)
    except asyncssh.ChannelOpenError as exc:
        reason = printable(exc.reason)  # the device's text
        await end(0, 0, reason)
        raise asyncssh.ChannelOpenError(exc.code, f"node {state.node.name!r}: {reason}") from None
    except (asyncssh.Error, OSError) as exc:
        await end(0, 0, type(exc).__name__)
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_CONNECT_FAILED, f"node {state.node.name!r} is not reachable; try again"
        ) from None
    user_side = _Counted(device_side, on_lost=lost)
    sides.extend([user_side, device_side])
    return user_side
