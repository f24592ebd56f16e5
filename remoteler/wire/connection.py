"""The sans-I/O tunnel core: channels, flow control, heartbeats.

Feed it websocket messages with :meth:`Connection.receive_message`, act on
:meth:`Connection.events_received`, send what :meth:`Connection.messages_to_send`
returns (one websocket binary message each, in order), and call
:meth:`Connection.handle_timer` when :meth:`Connection.get_timer` says so.
Nothing here does I/O or reads the clock; see ``docs/wire-protocol.md``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any

from .codes import ErrorCode, OpenFailure
from .events import (
    ChannelClosed,
    ChannelOpened,
    ChannelOpenFailed,
    ChannelOpenRequested,
    ConnectionClosed,
    DataReceived,
    EofReceived,
    Event,
    HeartbeatReceived,
    PongReceived,
    WindowUpdated,
)
from .exceptions import InvalidState, ProtocolError
from .frames import (
    MAX_CHANNEL_ID,
    MAX_KIND_LEN,
    MAX_REASON_LEN,
    MAX_RETRY_AFTER_MS,
    MAX_SEQ,
    CloseFrame,
    DataFrame,
    EofFrame,
    Frame,
    GoAwayFrame,
    OpenFailFrame,
    OpenFrame,
    OpenOkFrame,
    PingFrame,
    PongFrame,
    WindowFrame,
    data_header,
    decode_frame,
    encode_frame,
)
from .limits import Limits
from .sched import Priority, Scheduler, priority_for_kind

__all__ = ["ChannelState", "Connection", "Priority", "Role", "State"]

logger = logging.getLogger("remoteler.wire")

DEFAULT_LIMITS = Limits()

#: PINGs remembered for RTT measurement.
_MAX_OUTSTANDING_PINGS = 8


class Role(Enum):
    """Which end of the tunnel we are; decides channel id parity."""

    DIALER = "dialer"
    """The edge agent: opens the websocket, allocates odd channel ids."""
    LISTENER = "listener"
    """The hub: accepts the websocket, allocates even channel ids."""


class State(Enum):
    """Tunnel state."""

    OPEN = "open"
    CLOSED = "closed"


class ChannelState(Enum):
    """Channel state as seen by the local side."""

    OPENING = "opening"
    """We sent OPEN and wait for OPEN_OK / OPEN_FAIL."""
    PENDING = "pending"
    """The peer sent OPEN; we have not accepted or rejected yet."""
    OPEN = "open"
    """Data may flow both ways (until EOFs)."""
    CLOSING = "closing"
    """We asked to close; waiting for the peer's CLOSE. Incoming data is dropped."""
    CLOSED = "closed"
    """Fully closed, or never existed."""


class _Channel:
    __slots__ = (
        "buffered",
        "close_sent",
        "confirmed",
        "eof_received",
        "eof_requested",
        "eof_sent",
        "gone",
        "head_off",
        "id",
        "local",
        "priority",
        "recv_outstanding",
        "recv_unacked",
        "recv_window",
        "scheduled",
        "send_buf",
        "send_window",
        "sparse_bytes",
        "sparse_epoch",
        "state",
    )

    def __init__(
        self,
        channel_id: int,
        state: ChannelState,
        local: bool,
        recv_window: int,
        priority: Priority,
    ) -> None:
        self.id = channel_id
        self.state = state
        self.local = local
        self.confirmed = not local  # a local channel is confirmed by OPEN_OK
        self.send_window = 0  # bytes the peer lets us send
        self.send_buf: deque[bytes] = deque()
        self.head_off = 0  # bytes of send_buf[0] already framed
        self.buffered = 0  # bytes in send_buf not yet framed
        self.scheduled = False  # in Connection._sched
        self.priority = priority
        self.sparse_bytes = 0  # see Scheduler
        self.sparse_epoch = -1
        self.eof_requested = False
        self.eof_sent = False
        self.close_sent = False
        self.eof_received = False
        self.recv_window = recv_window  # bytes the peer may still send us
        self.recv_outstanding = 0  # delivered to the app, not consumed yet
        self.recv_unacked = 0  # consumed, not yet granted back with WINDOW
        self.gone = False


class Connection:
    """One end of a tunnel: a multiplexer of flow-controlled channels.

    Commands raise :class:`InvalidState` on local misuse; peer input never
    raises, it fails the tunnel instead (a :class:`ConnectionClosed` event).
    """

    def __init__(self, role: Role, limits: Limits = DEFAULT_LIMITS, now: float = 0.0) -> None:
        self.role = role
        self.limits = limits
        self.heartbeat_payload: dict[str, Any] | None = None
        """Status for the peer, set by the application; a PING carries it only when it
        changed since the last PING (idle tunnels on metered links send ~5-byte PINGs)."""
        self._sent_payload: dict[str, Any] | None = None
        self.last_received = now
        """Clock value when the last message arrived."""
        self._state = State.OPEN
        self._channels: dict[int, _Channel] = {}
        self._sched: Scheduler[_Channel] = Scheduler(
            min(limits.data_quantum, limits.max_data_chunk)
        )
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._next_id = 1 if role is Role.DIALER else 2
        self._parity = self._next_id % 2
        self._ping_seq = 0
        self._pings: dict[int, float] = {}
        self._next_ping = now + limits.heartbeat_interval
        self.pong_clock: Callable[[], float] | None = None
        """Wall clock to stamp our PONGs with (the hub sets it for agents that sent
        ``clock=1``; docs/wire-protocol.md); None sends 2-item PONGs."""
        self.ping_at_start = False
        """Send the first PING as soon as the timers start, not one interval later
        (an agent learns the hub's time, and the hub its status, at once)."""

    # -- inspection -----------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def open_channel_count(self) -> int:
        """Channels not yet fully closed, both directions."""
        return len(self._channels)

    @property
    def wants_write(self) -> bool:
        """True if :meth:`messages_to_send` may return something."""
        return bool(self._out) or (self._sched.size > 0 and self._state is State.OPEN)

    @property
    def queued_control(self) -> int:
        """Frames queued for :meth:`messages_to_send` (control frames: PONG, WINDOW...)."""
        return len(self._out)

    def channel_state(self, channel_id: int) -> ChannelState:
        ch = self._channels.get(channel_id)
        return ChannelState.CLOSED if ch is None else ch.state

    def buffered_amount(self, channel_id: int) -> int:
        """Bytes passed to :meth:`send_data` and not yet framed (0 if unknown)."""
        ch = self._channels.get(channel_id)
        return 0 if ch is None else ch.buffered

    # -- I/O ------------------------------------------------------------------

    def events_received(self) -> list[Event]:
        """Return and forget the events produced so far."""
        events, self._events = self._events, []
        return events

    def messages_to_send(
        self, limit: int | None = None, frame_max: int | None = None
    ) -> list[bytes]:
        """Return and forget the messages to send, each one websocket binary message.

        Control frames come first. Buffered channel data is framed here, as far
        as each peer window allows, in the order the scheduler picks (priority
        class, sparse channels first, byte round robin; see
        :mod:`remoteler.wire.sched`). ``limit`` caps the payload bytes framed in
        this call (at least one frame is framed); the rest stays buffered for the
        next call. A writer that takes one frame at a time (``limit=1``) lets data
        written meanwhile overtake what is still buffered. ``frame_max`` caps each
        DATA payload below the limits' ``max_data_chunk`` and quantum (a slow
        link's budget, :mod:`remoteler.wire.pace`).
        """
        if self._sched.size and self._state is State.OPEN:
            self._frame_data(limit, frame_max)
        out, self._out = self._out, []
        return out

    def receive_message(self, message: bytes | str, now: float) -> None:
        """Process one websocket message. Never raises for peer input."""
        if self._state is not State.OPEN:
            return
        self.last_received = now
        if isinstance(message, str):
            self.fail(ErrorCode.TEXT_MESSAGE, "text websocket message")
            return
        if len(self._out) >= self.limits.max_queued_control:
            # Each frame the peer sends may queue a reply (PONG, CLOSE); it sends
            # more while it reads none of them. Refuse to pile them up.
            self._out.clear()
            self.fail(
                ErrorCode.FLOW_CONTROL,
                f"{len(self._out)} control frames unsent: the peer is not reading",
            )
            return
        try:
            frame = decode_frame(message, self.limits)
            self._handle_frame(frame, now)
        except ProtocolError as exc:
            self.fail(exc.code, exc.message)
        except Exception as exc:  # a bug here must not take the process down
            logger.exception("internal error handling a frame")
            self.fail(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")

    # -- timers ---------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        interval = self.limits.heartbeat_interval
        if self._state is not State.OPEN or interval <= 0:
            return None
        deadline = self.last_received + interval * self.limits.allowed_misses
        if self.limits.send_heartbeats:
            return min(deadline, self._next_ping)
        return deadline

    def start_timers(self, now: float) -> None:
        """Restart the heartbeat clocks at ``now`` (when the transport starts running).

        Needed when the core was created with a ``now`` from another clock or
        some time before the tunnel went live.
        """
        self.last_received = now
        self._next_ping = now + self.limits.heartbeat_interval
        if self.ping_at_start or (
            self.limits.send_heartbeats and self.heartbeat_payload is not None
        ):
            # The first PING (the agent's status: serial ports, labels; the hub's time in
            # its PONG) goes at once, so the hub shows the status from the connect and the
            # agent knows its clock skew, not one heartbeat interval later.
            self._next_ping = now

    def handle_timer(self, now: float) -> None:
        """Send a PING if one is due; fail with HEARTBEAT_TIMEOUT if the peer is silent."""
        interval = self.limits.heartbeat_interval
        if self._state is not State.OPEN or interval <= 0:
            return
        silence = now - self.last_received
        if silence >= interval * self.limits.allowed_misses:
            self.fail(ErrorCode.HEARTBEAT_TIMEOUT, f"nothing received for {silence:.1f}s")
            return
        if self.limits.send_heartbeats and now >= self._next_ping:
            # PING every interval even when busy: it carries the agent's status.
            seq = self._ping_seq
            self._ping_seq = (seq + 1) & MAX_SEQ
            self._pings[seq] = now
            if len(self._pings) > _MAX_OUTSTANDING_PINGS:
                del self._pings[next(iter(self._pings))]
            payload = self.heartbeat_payload
            if payload == self._sent_payload:
                payload = None
            else:
                self._sent_payload = payload
            self._send(PingFrame(seq, payload))
            self._next_ping = now + interval

    # -- tunnel commands ------------------------------------------------------

    def ping(self, now: float) -> None:
        """Queue a PING without payload now (a liveness probe, from either end): the
        peer answers PONG, and whatever arrives next moves :attr:`last_received`."""
        if self._state is not State.OPEN:
            raise InvalidState("tunnel is closed")
        seq = self._ping_seq
        self._ping_seq = (seq + 1) & MAX_SEQ
        self._pings[seq] = now
        if len(self._pings) > _MAX_OUTSTANDING_PINGS:
            del self._pings[next(iter(self._pings))]
        self._send(PingFrame(seq, None))

    def fail(self, code: ErrorCode, reason: str) -> None:
        """Abort the tunnel: GOAWAY(code) to the peer, ConnectionClosed locally.

        The peer gets only the code's name; ``reason`` stays local. Next: send
        :meth:`messages_to_send`, then close the websocket. No-op once closed.
        """
        if self._state is not State.OPEN:
            return
        logger.warning("tunnel failed: %s: %s", code.name, reason)
        self._send(GoAwayFrame(code, code.name))
        self._terminate(ConnectionClosed(code, reason, by_peer=False))

    def close(
        self, code: ErrorCode = ErrorCode.NORMAL, reason: str = "", retry_after: float | None = None
    ) -> None:
        """Close the tunnel gracefully: frame what the windows allow, then GOAWAY.

        ``retry_after`` (seconds, 0 … 3600, sent rounded to milliseconds) asks the
        peer to wait that long before reconnecting. Next: send
        :meth:`messages_to_send`, then close the websocket. No-op once closed.
        """
        if self._state is not State.OPEN:
            return
        retry_ms = None
        if retry_after is not None:
            if not 0 <= retry_after <= MAX_RETRY_AFTER_MS / 1000:
                raise InvalidState(f"retry_after must be 0..{MAX_RETRY_AFTER_MS // 1000} s")
            retry_ms = round(retry_after * 1000)
        if self._sched.size:
            self._frame_data(None, None)
        self._send(GoAwayFrame(code, reason[:MAX_REASON_LEN], retry_ms))
        self._terminate(ConnectionClosed(code, reason, by_peer=False))

    def connection_lost(self, reason: str = "") -> None:
        """The transport went away without a GOAWAY; nothing more can be sent."""
        if self._state is not State.OPEN:
            return
        self._terminate(ConnectionClosed(ErrorCode.GOING_AWAY, reason, by_peer=True))

    # -- channel commands -----------------------------------------------------

    def open_channel(
        self, kind: str, meta: dict[str, Any], priority: Priority | None = None
    ) -> int:
        """Send OPEN and return the new channel id; wait for ChannelOpened/ChannelOpenFailed.

        Data may be sent right away; it is buffered until the peer accepts.
        ``priority`` schedules what we send on it (default: by ``kind``, see
        :func:`~remoteler.wire.sched.priority_for_kind`); the peer chooses its own.
        """
        self._check_open()
        if not 1 <= len(kind) <= MAX_KIND_LEN:
            raise InvalidState(f"channel kind must be 1..{MAX_KIND_LEN} characters")
        if self._count(local=True) >= self.limits.max_channels:
            raise InvalidState(f"{self.limits.max_channels} channels already open")
        channel_id = self._allocate_id()
        message = encode_frame(OpenFrame(channel_id, kind, meta, self.limits.initial_window))
        if len(message) > self.limits.max_meta_bytes:
            raise InvalidState(f"OPEN frame exceeds {self.limits.max_meta_bytes} bytes")
        self._channels[channel_id] = _Channel(
            channel_id,
            ChannelState.OPENING,
            True,
            self.limits.initial_window,
            priority_for_kind(kind) if priority is None else priority,
        )
        self._out.append(message)
        return channel_id

    def accept_channel(self, channel_id: int, priority: Priority | None = None) -> None:
        """Accept a channel the peer asked for (ChannelOpenRequested).

        ``priority`` schedules what we send on it (default: by the requested kind).
        """
        ch = self._pending(channel_id)
        ch.state = ChannelState.OPEN
        if priority is not None:
            ch.priority = priority
        self._send(OpenOkFrame(channel_id, self.limits.initial_window))

    def reject_channel(self, channel_id: int, code: OpenFailure, reason: str) -> None:
        """Refuse a channel the peer asked for; the id is forgotten (no ChannelClosed)."""
        ch = self._pending(channel_id)
        self._send(OpenFailFrame(channel_id, int(code), reason[:MAX_REASON_LEN]))
        self._forget(ch, emit=False)

    def send_data(self, channel_id: int, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes; they are framed by :meth:`messages_to_send` as the window allows.

        Check :meth:`buffered_amount` for backpressure.
        """
        ch = self._channels.get(channel_id)
        if ch is None or ch.state not in (ChannelState.OPEN, ChannelState.OPENING):
            raise InvalidState(f"channel {channel_id} is not open")
        if ch.eof_requested:
            raise InvalidState(f"channel {channel_id}: data after EOF")
        if not data:
            return
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse a bytearray/memoryview
        sparse = not ch.buffered  # nothing was waiting: a keystroke, a short reply
        ch.send_buf.append(data)
        ch.buffered += len(data)
        if ch.confirmed and ch.send_window > 0:
            self._sched.push(ch, sparse)

    def send_eof(self, channel_id: int) -> None:
        """Half-close: EOF is sent after the buffered data. No-op if closing or unknown."""
        ch = self._channels.get(channel_id)
        if ch is None or ch.state is ChannelState.CLOSING or ch.eof_requested:
            return
        if ch.state is ChannelState.PENDING:
            raise InvalidState(f"channel {channel_id} is not accepted yet")
        ch.eof_requested = True
        if ch.confirmed:
            self._sched.push(ch, True)

    def close_channel(self, channel_id: int) -> None:
        """Close a channel: CLOSE is sent after the buffered data and any EOF.

        ChannelClosed follows once the peer's CLOSE arrives. Closing a PENDING
        channel rejects it (REFUSED); unknown or closing ids are a no-op.
        """
        ch = self._channels.get(channel_id)
        if ch is None or ch.state is ChannelState.CLOSING:
            return
        if ch.state is ChannelState.PENDING:
            self.reject_channel(channel_id, OpenFailure.REFUSED, "closed")
            return
        ch.state = ChannelState.CLOSING
        if ch.confirmed:
            self._sched.push(ch, True)

    def consume(self, channel_id: int, n: int) -> None:
        """The application processed ``n`` received bytes: grant the peer more window."""
        ch = self._channels.get(channel_id)
        if ch is None or n == 0 or ch.state is ChannelState.CLOSING:
            return
        if not 0 < n <= ch.recv_outstanding:
            raise InvalidState(
                f"channel {channel_id}: consume({n}) but {ch.recv_outstanding} unconsumed"
            )
        ch.recv_outstanding -= n
        ch.recv_unacked += n
        if ch.recv_unacked >= self.limits.initial_window // 2 and not ch.eof_received:
            increment, ch.recv_unacked = ch.recv_unacked, 0
            ch.recv_window += increment
            self._send(WindowFrame(channel_id, increment))

    # -- internals ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state is not State.OPEN:
            raise InvalidState("tunnel is closed")

    def _send(self, frame: Frame) -> None:
        self._out.append(encode_frame(frame))

    def _pending(self, channel_id: int) -> _Channel:
        self._check_open()
        ch = self._channels.get(channel_id)
        if ch is None or ch.state is not ChannelState.PENDING:
            raise InvalidState(f"channel {channel_id} is not a pending request")
        return ch

    def _count(self, local: bool) -> int:
        # Counted per opening side. The peer forgets a channel only after our
        # CLOSE reached it and its CLOSE is on the way, and its CLOSE precedes
        # any later OPEN, so our count of its channels never exceeds its own.
        return sum(1 for ch in self._channels.values() if ch.local is local)

    def _allocate_id(self) -> int:
        channel_id = self._next_id
        while channel_id in self._channels:
            channel_id += 2
            if channel_id > MAX_CHANNEL_ID:
                channel_id = 2 - self._parity
        self._next_id = channel_id + 2 if channel_id + 2 <= MAX_CHANNEL_ID else 2 - self._parity
        return channel_id

    def _forget(self, ch: _Channel, emit: bool = True) -> None:
        ch.gone = True
        ch.send_buf.clear()
        ch.buffered = 0
        del self._channels[ch.id]
        if emit:
            self._events.append(ChannelClosed(ch.id))

    def _terminate(self, event: ConnectionClosed) -> None:
        self._state = State.CLOSED
        for ch in self._channels.values():
            ch.gone = True
        self._channels.clear()
        self._sched.clear()
        self._events.append(event)

    def _frame_data(self, limit: int | None, frame_max: int | None) -> None:
        """Cut buffered data into DATA frames in scheduler order; EOF/CLOSE once drained."""
        sched, out, chunk_max = self._sched, self._out, self.limits.max_data_chunk
        cut = chunk_max if frame_max is None else max(1, min(frame_max, chunk_max))
        budget = -1 if limit is None else max(limit, 1)
        while budget != 0 and (picked := sched.pop(cut)) is not None:
            ch, sparse = picked
            if ch.gone:
                ch.scheduled = False
                continue
            if ch.buffered:
                n = min(ch.buffered, ch.send_window, sched.cap(ch, sparse, chunk_max), cut)
                if n <= 0:
                    ch.scheduled = False  # rescheduled by the peer's WINDOW
                    continue
                out.append(self._take(ch, n))
                if budget > 0:
                    budget = max(budget - n, 0)
                if ch.buffered:
                    sched.served(ch, n, sparse, ch.send_window > 0)
                    continue
                sched.served(ch, n, sparse, False)
            else:
                ch.scheduled = False
            if ch.eof_requested and not ch.eof_sent:
                ch.eof_sent = True
                out.append(encode_frame(EofFrame(ch.id)))
            if ch.state is ChannelState.CLOSING and not ch.close_sent:
                ch.close_sent = True
                out.append(encode_frame(CloseFrame(ch.id)))

    def _take(self, ch: _Channel, n: int) -> bytes:
        """Remove ``n`` buffered bytes and return them as one DATA message."""
        ch.buffered -= n
        ch.send_window -= n
        buf = ch.send_buf
        parts: list[bytes | memoryview] = [data_header(ch.id, n)]
        while n:
            head = buf[0]
            off = ch.head_off
            avail = len(head) - off
            if avail <= n:
                parts.append(head if off == 0 else memoryview(head)[off:])
                buf.popleft()
                ch.head_off = 0
                n -= avail
            else:
                parts.append(memoryview(head)[off : off + n])
                ch.head_off = off + n
                n = 0
        return b"".join(parts)

    def _lookup(self, channel_id: int) -> _Channel:
        ch = self._channels.get(channel_id)
        if ch is None:
            raise ProtocolError(ErrorCode.UNKNOWN_CHANNEL, f"no channel {channel_id}")
        return ch

    def _check_window(self, ch: _Channel, window: int) -> None:
        if window > self.limits.max_window:
            raise ProtocolError(
                ErrorCode.FLOW_CONTROL,
                f"channel {ch.id}: send window {window} exceeds {self.limits.max_window}",
            )

    def _handle_frame(self, frame: Frame, now: float) -> None:
        match frame:
            case DataFrame(channel_id, payload):
                ch = self._lookup(channel_id)
                if ch.state is ChannelState.CLOSING:
                    return  # crossed our CLOSE; the peer has not seen it yet
                if not ch.confirmed or ch.state is ChannelState.PENDING or ch.eof_received:
                    raise ProtocolError(
                        ErrorCode.CHANNEL_STATE,
                        f"DATA on channel {channel_id} in state {ch.state.name}"
                        + (" after EOF" if ch.eof_received else ""),
                    )
                n = len(payload)
                if n > ch.recv_window:
                    raise ProtocolError(
                        ErrorCode.FLOW_CONTROL,
                        f"channel {channel_id}: {n} bytes exceed window {ch.recv_window}",
                    )
                ch.recv_window -= n
                ch.recv_outstanding += n
                self._events.append(DataReceived(channel_id, payload))
            case WindowFrame(channel_id, increment):
                ch = self._lookup(channel_id)
                if ch.close_sent:
                    return
                self._require_established(ch, "WINDOW")
                self._check_window(ch, ch.send_window + increment)
                ch.send_window += increment
                if ch.buffered:
                    self._sched.push(ch, False)
                self._events.append(WindowUpdated(channel_id))
            case EofFrame(channel_id):
                ch = self._lookup(channel_id)
                if ch.state is ChannelState.CLOSING:
                    return
                self._require_established(ch, "EOF")
                if ch.eof_received:
                    raise ProtocolError(ErrorCode.CHANNEL_STATE, f"second EOF on {channel_id}")
                ch.eof_received = True
                self._events.append(EofReceived(channel_id))
            case CloseFrame(channel_id):
                ch = self._lookup(channel_id)
                self._require_established(ch, "CLOSE")
                if not ch.close_sent:
                    # Peer closed first: answer at once, dropping unsent data.
                    self._send(CloseFrame(channel_id))
                self._forget(ch)
            case OpenFrame(channel_id, kind, meta, initial_window):
                if channel_id % 2 == self._parity:
                    raise ProtocolError(
                        ErrorCode.CHANNEL_STATE, f"peer OPEN with our id parity: {channel_id}"
                    )
                if channel_id in self._channels:
                    raise ProtocolError(ErrorCode.CHANNEL_STATE, f"channel {channel_id} in use")
                if self._count(local=False) >= self.limits.max_channels:
                    raise ProtocolError(
                        ErrorCode.TOO_MANY_CHANNELS,
                        f"peer exceeded {self.limits.max_channels} channels",
                    )
                ch = _Channel(
                    channel_id,
                    ChannelState.PENDING,
                    False,
                    self.limits.initial_window,
                    priority_for_kind(kind),
                )
                self._check_window(ch, initial_window)
                ch.send_window = initial_window
                self._channels[channel_id] = ch
                self._events.append(ChannelOpenRequested(channel_id, kind, meta))
            case OpenOkFrame(channel_id, initial_window):
                ch = self._opening(channel_id, "OPEN_OK")
                self._check_window(ch, initial_window)
                ch.send_window = initial_window
                ch.confirmed = True
                if ch.state is ChannelState.OPENING:
                    ch.state = ChannelState.OPEN
                self._events.append(ChannelOpened(channel_id))
                if ch.buffered or ch.eof_requested or ch.state is ChannelState.CLOSING:
                    self._sched.push(ch, False)
            case OpenFailFrame(channel_id, code, reason):
                ch = self._opening(channel_id, "OPEN_FAIL")
                self._forget(ch, emit=False)
                failure: OpenFailure | int = (
                    OpenFailure(code) if code in OpenFailure._value2member_map_ else code
                )
                self._events.append(ChannelOpenFailed(channel_id, failure, reason))
            case PingFrame(seq, payload):
                stamp = self.pong_clock() if self.pong_clock is not None else None
                self._send(PongFrame(seq, stamp))
                self._events.append(HeartbeatReceived(payload))
            case PongFrame(seq, peer_time):
                sent = self._pings.pop(seq, None)
                if sent is not None:
                    self._events.append(PongReceived(seq, max(now - sent, 0.0), peer_time))
            case GoAwayFrame(code, reason, retry_ms):
                retry_after = None if retry_ms is None else retry_ms / 1000
                if code in ErrorCode._value2member_map_:
                    self._terminate(ConnectionClosed(ErrorCode(code), reason, True, retry_after))
                else:
                    self._terminate(
                        ConnectionClosed(
                            ErrorCode.INTERNAL, f"peer code {code}: {reason}", True, retry_after
                        )
                    )

    def _require_established(self, ch: _Channel, what: str) -> None:
        if not ch.confirmed or ch.state is ChannelState.PENDING:
            raise ProtocolError(
                ErrorCode.CHANNEL_STATE, f"{what} on channel {ch.id} before it was accepted"
            )

    def _opening(self, channel_id: int, what: str) -> _Channel:
        ch = self._lookup(channel_id)
        if not ch.local or ch.confirmed:
            raise ProtocolError(
                ErrorCode.CHANNEL_STATE, f"{what} for channel {channel_id} not being opened"
            )
        return ch
