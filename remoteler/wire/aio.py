"""asyncio adapter: pump a :class:`Connection` over a ``websockets`` connection.

All protocol decisions live in the sans-I/O core; this module only feeds it
messages, flushes its output through a single writer task, drives its timer
and turns its events into stream-like :class:`Channel` objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from ..linktune import apply_budget
from .codes import ErrorCode, OpenFailure
from .connection import Connection, State
from .events import (
    ChannelClosed,
    ChannelOpened,
    ChannelOpenFailed,
    ChannelOpenRequested,
    ConnectionClosed,
    DataReceived,
    EofReceived,
    HeartbeatReceived,
    PongReceived,
)
from .exceptions import (
    ChannelClosedError,
    ChannelOpenError,
    InvalidState,
    TunnelClosed,
)
from .limits import Limits
from .pace import LinkPacer
from .sched import Priority

__all__ = ["Channel", "ChannelRequest", "Tunnel", "WebSocketLike"]

logger = logging.getLogger("remoteler.wire")

#: drain() blocks while more than this many bytes are buffered on a channel.
HIGH_WATER = 1 << 20
#: Seconds allowed to flush the GOAWAY once the tunnel is closed.
FLUSH_TIMEOUT = 5.0

# RFC 6455 §7.4.1 close codes for the websocket close that follows a GOAWAY.
_WS_CLOSE_CODES = {
    ErrorCode.NORMAL: 1000,
    ErrorCode.GOING_AWAY: 1001,
    ErrorCode.TEXT_MESSAGE: 1003,
    ErrorCode.FRAME_TOO_LARGE: 1009,
    ErrorCode.HEARTBEAT_TIMEOUT: 1011,
    ErrorCode.INTERNAL: 1011,
}


class WebSocketLike(Protocol):
    """What :class:`Tunnel` needs from a ``websockets.asyncio`` connection."""

    async def recv(self) -> bytes | str: ...

    async def send(self, message: bytes) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


class Channel:
    """A bidirectional byte stream multiplexed over a tunnel."""

    def __init__(self, tunnel: Tunnel, channel_id: int, kind: str, meta: dict[str, Any]) -> None:
        self.channel_id = channel_id
        self.kind = kind
        self.meta = meta
        self._tunnel = tunnel
        self._core = tunnel._core
        self._buf: deque[bytes] = deque()
        self._buf_off = 0
        self._buf_size = 0
        self._eof = False  # peer sent EOF
        self._closed = False  # fully closed, or tunnel gone
        self._eof_sent = False
        self._local_closed = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._receiver: Callable[[bytes], None] | None = None
        self._on_eof: Callable[[], None] | None = None
        self._eof_delivered = False

    def __repr__(self) -> str:
        return f"<Channel {self.channel_id} {self.kind}>"

    @property
    def at_eof(self) -> bool:
        """True once every byte the peer will send has been read."""
        return (self._eof or self._closed) and not self._buf_size

    @property
    def eof_received(self) -> bool:
        """True once the peer half-closed (sent EOF): its stream ended normally."""
        return self._eof

    @property
    def buffered_amount(self) -> int:
        """Bytes written but not yet framed (held back by the peer's window)."""
        return self._core.buffered_amount(self.channel_id)

    @property
    def is_closed(self) -> bool:
        """True once closed locally, by the peer, or by the tunnel's end."""
        return self._closed or self._local_closed

    async def read(self, n: int = -1) -> bytes:
        """Return up to ``n`` bytes (all available if ``n < 0``); ``b""`` at EOF or close.

        Waits for at least one byte; does not wait to fill ``n``.
        """
        if self._receiver is not None:
            raise InvalidState("read() while a receiver callback is set")
        while not self._buf_size:
            if self._eof or self._closed or self._local_closed:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._take(n)
        self.consumed(len(data))
        return data

    def _take(self, n: int) -> bytes:
        """Remove and return up to ``n`` buffered bytes (all if ``n < 0``), copying once."""
        buf, off = self._buf, self._buf_off
        head = buf[0]
        avail = len(head) - off
        if n < 0 or n > self._buf_size:
            n = self._buf_size
        if n < avail:
            data = head[off : off + n]
            self._buf_off = off + n
        elif n == avail:
            data = head[off:] if off else head
            buf.popleft()
            self._buf_off = 0
        else:
            parts: list[bytes | memoryview] = [memoryview(head)[off:]]
            buf.popleft()
            self._buf_off = 0
            need = n - avail
            while need:
                chunk = buf[0]
                if len(chunk) <= need:
                    parts.append(chunk)
                    buf.popleft()
                    need -= len(chunk)
                else:
                    parts.append(memoryview(chunk)[:need])
                    self._buf_off = need
                    need = 0
            data = b"".join(parts)
        self._buf_size -= len(data)
        return data

    def consumed(self, n: int) -> None:
        """Tell the tunnel ``n`` received bytes were processed (receiver mode only)."""
        if n and not self._closed:
            self._core.consume(self.channel_id, n)
            self._tunnel._kick()

    def set_receiver(
        self,
        callback: Callable[[bytes], None] | None,
        on_eof: Callable[[], None] | None = None,
    ) -> None:
        """Deliver data to ``callback`` instead of :meth:`read`; ``on_eof`` at EOF or close.

        The caller must then call :meth:`consumed` for every byte it has processed,
        or the peer stalls once the window is used up. Data already buffered is
        delivered at once. ``None`` returns to :meth:`read` mode.
        """
        self._receiver, self._on_eof = callback, on_eof
        if callback is None:
            return
        if self._buf_size:
            data = self._take(-1)
            callback(data)
        if self._eof or self._closed:
            self._deliver_eof()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; call :meth:`drain` to respect backpressure."""
        if self._closed or self._local_closed or self._eof_sent:
            raise ChannelClosedError(f"channel {self.channel_id} is closed for writing")
        try:
            self._core.send_data(self.channel_id, data)
        except InvalidState as exc:
            raise ChannelClosedError(str(exc)) from None
        self._tunnel._kick()

    async def drain(self) -> None:
        """Wait until the channel's unsent buffer is at or below the high-water mark."""
        while True:
            if self._closed or self._local_closed:
                raise ChannelClosedError(f"channel {self.channel_id} is closed")
            if self._core.buffered_amount(self.channel_id) <= HIGH_WATER:
                return
            self._writable.clear()
            self._tunnel._draining.add(self)
            await self._writable.wait()

    def write_eof(self) -> None:
        """Half-close: the peer reads EOF after the data already written."""
        if self._eof_sent or self._closed or self._local_closed:
            return
        self._eof_sent = True
        self._core.send_eof(self.channel_id)
        self._tunnel._kick()

    def close(self) -> None:
        """Close after the data already written; :meth:`wait_closed` waits for the peer."""
        if self._local_closed or self._closed:
            return
        self._local_closed = True
        self._core.close_channel(self.channel_id)
        self._readable.set()
        self._writable.set()
        self._tunnel._kick()

    async def wait_closed(self) -> None:
        """Wait until both sides closed the channel (or the tunnel ended)."""
        await self._closed_event.wait()

    # -- called by Tunnel -----------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._receiver is not None:
            self._receiver(data)
        elif not self._local_closed:
            self._buf.append(data)
            self._buf_size += len(data)
            self._readable.set()

    def _feed_eof(self) -> None:
        self._eof = True
        self._readable.set()
        self._deliver_eof()

    def _deliver_eof(self) -> None:
        if self._on_eof is not None and not self._eof_delivered:
            self._eof_delivered = True
            self._on_eof()

    def _set_closed(self) -> None:
        self._closed = True
        self._readable.set()
        self._writable.set()
        self._closed_event.set()
        self._deliver_eof()


class ChannelRequest:
    """An incoming OPEN handed to ``on_channel``: accept it or reject it."""

    def __init__(self, tunnel: Tunnel, channel_id: int, kind: str, meta: dict[str, Any]) -> None:
        self.channel_id = channel_id
        self.kind = kind
        self.meta = meta
        self._tunnel = tunnel
        self.answered = False
        self.channel: Channel | None = None

    def accept(self, priority: Priority | None = None) -> Channel:
        """Accept and return the channel. Raises TunnelClosed if the tunnel is gone.

        ``priority`` schedules what we send on it (default: by :attr:`kind`).
        """
        if self.answered:
            raise InvalidState(f"channel request {self.channel_id} already answered")
        self._tunnel._check_open()
        self._tunnel._core.accept_channel(self.channel_id, priority)
        self.answered = True
        self.channel = Channel(self._tunnel, self.channel_id, self.kind, self.meta)
        self._tunnel._channels[self.channel_id] = self.channel
        self._tunnel._kick()
        return self.channel

    def reject(self, code: OpenFailure, reason: str) -> None:
        """Refuse the channel; ``reason`` is sent to the peer."""
        if self.answered:
            raise InvalidState(f"channel request {self.channel_id} already answered")
        self.answered = True
        if self._tunnel._core.state is State.OPEN:
            self._tunnel._core.reject_channel(self.channel_id, code, reason)
            self._tunnel._kick()


class Tunnel:
    """Runs one tunnel: call :meth:`run` (it returns when the tunnel is closed)."""

    def __init__(
        self,
        ws: WebSocketLike,
        core: Connection,
        *,
        on_channel: Callable[[ChannelRequest], Awaitable[None]] | None = None,
        on_heartbeat: Callable[[dict[str, Any] | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_pong: Callable[[float, float | None], None] | None = None,
    ) -> None:
        self._ws = ws
        self._core = core
        self._on_channel = on_channel
        self._on_heartbeat = on_heartbeat
        self._clock = clock
        #: called with (rtt, the peer's time or None) for each answered PING
        self._on_pong = on_pong
        self._channels: dict[int, Channel] = {}
        self._opening: dict[int, asyncio.Future[None]] = {}
        self._draining: set[Channel] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        #: set when the core's control backlog is below the adapter's pause mark
        self._room = asyncio.Event()
        self._room.set()
        self._finished = asyncio.Event()
        self._running = False
        self.closed = asyncio.Event()
        self.close_code: ErrorCode | None = None
        self.close_reason = ""
        self.retry_after: float | None = None
        """Seconds the peer's GOAWAY asked us to wait before reconnecting, else None."""
        self.last_rtt: float | None = None
        #: the PING in flight for :meth:`probe`, shared by every caller meanwhile
        self._probe: asyncio.Future[bool] | None = None
        #: resolved by the peer's next message (or the tunnel closing) while it waits
        self._heard: asyncio.Future[bool] | None = None
        #: the link's drain rate and the frame/buffer budget it implies (slow links)
        self.pacer = LinkPacer(core.limits.max_data_chunk)

    # -- public API -----------------------------------------------------------

    async def run(self) -> None:
        """Pump the tunnel until it closes, then close the websocket and wake everyone."""
        self._running = True
        self._core.start_timers(self._clock())
        writer = asyncio.create_task(self._guard(self._writer()))
        others = [
            asyncio.create_task(self._guard(self._reader())),
            asyncio.create_task(self._guard(self._timer())),
        ]
        try:
            self._process()
            await self.closed.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), FLUSH_TIMEOUT)
        finally:
            self._core.connection_lost("tunnel stopped")  # no-op unless cancelled
            self._process()
            tasks = [writer, *others, *self._handlers]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            code = self.close_code or ErrorCode.GOING_AWAY
            transport = getattr(self._ws, "transport", None)
            if code is ErrorCode.HEARTBEAT_TIMEOUT and transport is not None:
                # The link is dead: a closing handshake would wait websockets'
                # close_timeout (10 s) for an answer that cannot come, keeping the
                # node "online" at the hub and the agent from redialling.
                transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await self._ws.close(_WS_CLOSE_CODES.get(code, 1002), code.name)
            self._finished.set()

    async def open_channel(
        self,
        kind: str,
        meta: dict[str, Any],
        timeout: float | None = 30,
        priority: Priority | None = None,
    ) -> Channel:
        """Open a channel and wait for the peer to accept it.

        ``priority`` schedules what we send on it (default: by ``kind``: "audit"
        and "firmware" are LOW, the rest NORMAL). Raises ChannelOpenError if
        refused (or not answered within ``timeout``: code CONNECT_FAILED),
        TunnelClosed if the tunnel is or goes down.
        """
        self._check_open()
        try:
            channel_id = self._core.open_channel(kind, meta, priority)
        except InvalidState as exc:
            raise ChannelOpenError(OpenFailure.RESOURCE_SHORTAGE, str(exc)) from None
        channel = Channel(self, channel_id, kind, meta)
        self._channels[channel_id] = channel
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._opening[channel_id] = future
        self._kick()
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            self._abandon(channel)
            raise ChannelOpenError(
                OpenFailure.CONNECT_FAILED, f"no answer within {timeout}s"
            ) from None
        except (ChannelOpenError, TunnelClosed):
            raise
        except BaseException:
            self._abandon(channel)
            raise
        finally:
            self._opening.pop(channel_id, None)
        return channel

    async def close(
        self,
        code: ErrorCode = ErrorCode.NORMAL,
        reason: str = "",
        retry_after: float | None = None,
    ) -> None:
        """Send GOAWAY and wait for :meth:`run` to finish (or close the websocket).

        ``retry_after`` (seconds, 0 … 3600) asks the peer to wait that long before
        reconnecting; the peer sees it as :attr:`Tunnel.retry_after`.
        """
        self._core.close(code, reason, retry_after)
        self._process()
        if self._running:
            await self._finished.wait()
        else:
            with contextlib.suppress(Exception):
                await self._ws.close(_WS_CLOSE_CODES.get(code, 1002), code.name)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The underlying transport's ``get_extra_info`` (``ssl_object``, ``peername``...)."""
        transport = getattr(self._ws, "transport", None)
        return transport.get_extra_info(name, default) if transport is not None else default

    @property
    def silence(self) -> float:
        """Seconds since the peer last sent anything."""
        return max(0.0, self._clock() - self._core.last_received)

    @property
    def limits(self) -> Limits:
        return self._core.limits

    async def probe(self, timeout: float) -> bool:
        """PING the peer; True as soon as anything arrives from it, False if nothing
        does within ``timeout`` seconds (or the tunnel closes first).

        Callers while a probe is in flight share it: one PING per tunnel however many
        users ask at once (a frozen link would only queue more), and one caller giving
        up does not end the probe for the others."""
        if self.closed.is_set() or self._core.state is not State.OPEN:
            return False
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probe_once(timeout))
        return await asyncio.shield(self._probe)

    async def _probe_once(self, timeout: float) -> bool:
        heard = self._heard = asyncio.get_running_loop().create_future()
        try:
            self._core.ping(self._clock())
            self._process()
            async with asyncio.timeout(timeout):
                return bool(await heard)
        except (TimeoutError, InvalidState):
            return False
        finally:
            self._heard = None

    def set_heartbeat_payload(self, payload: dict[str, Any] | None) -> None:
        """Status attached to the next PINGs (agent side)."""
        self._core.heartbeat_payload = payload

    # -- internals ------------------------------------------------------------

    def _check_open(self) -> None:
        if self.closed.is_set() or self._core.state is not State.OPEN:
            raise TunnelClosed(self.close_code or ErrorCode.GOING_AWAY, self.close_reason)

    def _abandon(self, channel: Channel) -> None:
        channel.close()

    def _kick(self) -> None:
        if self._core.wants_write:
            self._wakeup.set()

    async def _guard(self, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("tunnel task failed")
            self._core.fail(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            self._process()

    async def _reader(self) -> None:
        from websockets.exceptions import ConnectionClosed as WsClosed

        core, ws, clock = self._core, self._ws, self._clock
        # Stop reading while our replies to the peer's frames are not being sent:
        # well below the core's cap, so a slow but honest peer only waits.
        pause_at = max(core.limits.max_queued_control // 4, 1)
        try:
            while core.state is State.OPEN:
                if core.queued_control >= pause_at:
                    self._room.clear()
                    self._wakeup.set()
                    await self._room.wait()
                    continue
                message = await ws.recv()
                core.receive_message(message, clock())
                if self._heard is not None and not self._heard.done():
                    self._heard.set_result(True)
                self._process()
        except WsClosed as exc:
            core.connection_lost(f"websocket closed: {exc}")
            self._process()

    async def _writer(self) -> None:
        from websockets.exceptions import ConnectionClosed as WsClosed

        core, ws, pacer = self._core, self._ws, self.pacer
        chunk_max, clock = core.limits.max_data_chunk, time.monotonic
        transport = getattr(ws, "transport", None)
        applied = pacer.budget
        apply_budget(transport, applied)
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                # One DATA frame per call, sent before the next is cut: the scheduler
                # picks again for every frame, so a keystroke written meanwhile
                # overtakes a backlog instead of waiting behind a batch already
                # taken out of the core. Below us, websockets' send() waits while
                # the transport holds more than its write_limit (32 KiB, resuming
                # at 8 KiB), so little more than one frame is queued there.
                # Frames and the buffers below are sized to ~0.1 s of the link
                # (remoteler.wire.pace, remoteler.linktune): on a slow link a
                # whole 256 KiB frame would be 25 s that nothing can overtake.
                while messages := core.messages_to_send(1, pacer.frame_max(chunk_max)):
                    self._room.set()
                    self._notify_drainers()
                    for message in messages:
                        started = clock()
                        await ws.send(message)
                        now = clock()
                        pacer.sent(len(message), now - started, now)
                    if pacer.budget != applied:
                        applied = pacer.budget
                        apply_budget(transport, applied)
                pacer.idle()
                self._notify_drainers()
                if core.state is not State.OPEN:
                    return
        except WsClosed as exc:
            core.connection_lost(f"websocket closed: {exc}")
            self._process()

    async def _timer(self) -> None:
        core, clock = self._core, self._clock
        while (when := core.get_timer()) is not None:
            delay = when - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            core.handle_timer(clock())
            self._process()

    def _notify_drainers(self) -> None:
        if not self._draining:
            return
        core = self._core
        for channel in list(self._draining):
            if channel._closed or core.buffered_amount(channel.channel_id) <= HIGH_WATER:
                self._draining.discard(channel)
                channel._writable.set()

    def _process(self) -> None:
        """Act on the core's events, then wake the writer if there is output."""
        core = self._core
        for event in core.events_received():
            match event:
                case DataReceived(channel_id, data):
                    channel = self._channels.get(channel_id)
                    if channel is not None:
                        channel._feed(data)
                case EofReceived(channel_id):
                    if (channel := self._channels.get(channel_id)) is not None:
                        channel._feed_eof()
                case ChannelClosed(channel_id):
                    if (channel := self._channels.pop(channel_id, None)) is not None:
                        channel._set_closed()
                case ChannelOpenRequested(channel_id, kind, meta):
                    self._on_request(ChannelRequest(self, channel_id, kind, meta))
                case ChannelOpened(channel_id):
                    future = self._opening.get(channel_id)
                    if future is not None and not future.done():
                        future.set_result(None)
                case ChannelOpenFailed(channel_id, code, reason):
                    if (channel := self._channels.pop(channel_id, None)) is not None:
                        channel._set_closed()
                    future = self._opening.get(channel_id)
                    if future is not None and not future.done():
                        future.set_exception(ChannelOpenError(code, reason))
                case HeartbeatReceived(payload):
                    if self._on_heartbeat is not None:
                        try:
                            self._on_heartbeat(payload)
                        except Exception:
                            logger.exception("heartbeat callback failed")
                case PongReceived(_, rtt, peer_time):
                    self.last_rtt = rtt
                    if self._on_pong is not None:
                        try:
                            self._on_pong(rtt, peer_time)
                        except Exception:
                            logger.exception("pong callback failed")
                case ConnectionClosed(code, reason, by_peer, retry_after):
                    self._on_closed(code, reason, by_peer, retry_after)
        if core.wants_write:
            self._wakeup.set()

    def _on_closed(
        self, code: ErrorCode, reason: str, by_peer: bool, retry_after: float | None
    ) -> None:
        log = logger.info if code in (ErrorCode.NORMAL, ErrorCode.GOING_AWAY) else logger.warning
        log(
            "tunnel closed: code=%s by_peer=%s reason=%s retry_after=%s",
            code.name,
            by_peer,
            reason,
            retry_after,
        )
        self.close_code, self.close_reason = code, reason
        self.retry_after = retry_after
        self.closed.set()
        self._room.set()
        if self._heard is not None and not self._heard.done():
            self._heard.set_result(False)
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            channel._set_closed()
        for future in self._opening.values():
            if not future.done():
                future.set_exception(TunnelClosed(code, reason))
        self._wakeup.set()

    def _on_request(self, request: ChannelRequest) -> None:
        if self._on_channel is None:
            request.reject(OpenFailure.UNKNOWN_KIND, "no channels accepted here")
            return
        task = asyncio.create_task(self._handle_request(self._on_channel, request))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle_request(
        self, handler: Callable[[ChannelRequest], Awaitable[None]], request: ChannelRequest
    ) -> None:
        try:
            await handler(request)
        except Exception:
            logger.exception("channel handler failed: kind=%s", request.kind)
            if request.channel is not None:
                request.channel.close()
        finally:
            if not request.answered:
                request.reject(OpenFailure.REFUSED, "refused")
