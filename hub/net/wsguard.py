"""Caps and deadlines on what the hub has yet to send on one websocket connection.

websockets answers every PING with a PONG (and a CLOSE with a CLOSE) from
``data_received``, writing to the transport with no flow control: a peer that
sends pings and never reads makes the hub buffer the PONGs for ever (measured
before this module: +127 MiB in 20 s per connection, no certificate needed on
``/v1/rpc``). And ``close()`` waits for the write buffer to drain before its
own ``close_timeout`` starts, so a peer that stopped reading kept its
connection (and buffers) past every idle timeout.

:class:`GuardedConnection` is websockets' ``ServerConnection`` with three limits
(:class:`WsGuardLimits`):

- **unsent bytes**: when the peer's input made the hub write and the transport
  then holds more than ``max_unsent`` bytes beyond the messages the hub is
  sending itself, the transport is aborted. The hub's own messages (an RPC
  result, a 256 KiB relay chunk) are not counted: each ``send`` waits for the
  buffer to drain (websockets' ``write_limit``) before the next one.
- **stalled writes**: a ``send`` whose buffer makes no progress for
  ``stall_timeout`` seconds aborts the transport (a peer that stopped reading
  while the hub had something to say).
- **close deadline**: ``close()`` as a whole, flushing included, takes at most
  ``close_timeout`` seconds; then the transport is aborted.

All three apply to every endpoint (``/v1/rpc``, ``/v1/tunnel``, ``/v1/connect``):
the listener builds every connection with this class.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection

from hub.net.wsutil import peer_addr, peer_host

log = logging.getLogger("remoteler.hub.wsguard")


@dataclass(frozen=True)
class WsGuardLimits:
    #: bytes the peer may make the hub buffer (PONGs, a CLOSE) on top of the
    #: hub's own messages in flight; past it the connection is aborted. Legit
    #: peers never get near it: a websocket PONG is at most 127 bytes and
    #: websockets pauses our own sends at ``write_limit`` (32 KiB).
    max_unsent: int = 1 << 20
    #: seconds a send may wait without the peer taking a single byte: longer
    #: than a tunnel's heartbeat timeout (90 s), which acts first on tunnels;
    #: a suspended ``tsh`` (Ctrl-Z) with output pending keeps its session this long
    stall_timeout: float = 120.0
    #: seconds for the whole closing handshake, flush included
    close_timeout: float = 10.0


#: ``on_abort(kind, peer_host)``: told of each abort instead of a log line per
#: connection (the listener counts them into its once-a-minute summary)
AbortHook = Callable[[str, str], None]


class GuardedConnection(ServerConnection):
    """websockets' ServerConnection with a cap on unsent bytes and bounded waits."""

    def __init__(
        self, *args: Any, guard: WsGuardLimits, on_abort: AbortHook | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("close_timeout", guard.close_timeout)
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.on_abort = on_abort
        #: bytes of the messages our own ``send`` calls are writing right now
        self._own_bytes = 0
        self.aborted_for: str | None = None

    # the cap ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # websockets has written its automatic replies (PONG, CLOSE) by now.
        if self.aborted_for is None and hasattr(self, "transport"):
            unsent = self.transport.get_write_buffer_size()
            if unsent > self.guard.max_unsent + self._own_bytes:
                self._abort("unsent cap", f"{unsent} bytes unsent (peer not reading)")

    async def send(self, message: Any, *, text: bool | None = None) -> None:
        size = len(message) if isinstance(message, bytes | bytearray | memoryview | str) else 0
        self._own_bytes += size
        try:
            await super().send(message, text=text)
        finally:
            self._own_bytes -= size

    # the deadlines ---------------------------------------------------------
    async def drain(self) -> None:
        """websockets' drain, aborting when the peer takes nothing for ``stall_timeout``."""
        while self.paused and not self.transport.is_closing():
            before = self.transport.get_write_buffer_size()
            try:
                async with asyncio.timeout(self.guard.stall_timeout):
                    await super().drain()
                return
            except TimeoutError:
                if self.transport.get_write_buffer_size() >= before:
                    self._abort(
                        "stalled send", f"peer took no data for {self.guard.stall_timeout:g} s"
                    )
                    raise
        await super().drain()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """websockets' close, the flush included, within ``close_timeout``; then abort."""
        try:
            async with asyncio.timeout(self.guard.close_timeout):
                await super().close(code, reason)
        except TimeoutError:
            self._abort("close deadline", f"closing took over {self.guard.close_timeout:g} s")
            await asyncio.shield(self.connection_lost_waiter)

    def _abort(self, kind: str, why: str) -> None:
        """Abort the transport; ``kind`` is a fixed category, ``why`` the detail."""
        if self.aborted_for is not None:
            return
        self.aborted_for = why
        if self.on_abort is not None:
            self.on_abort(kind, peer_host(self) or "?")
        else:
            log.warning("websocket aborted: %s", why, extra={"peer": peer_addr(self)})
        self.transport.abort()
