"""The sans-I/O core of a resumable stream: numbering, acknowledgement and replay.

Each side numbers the bytes it sends (its end of stream counts as one more byte),
keeps those the peer has not acknowledged in a replay buffer bounded by
``buffer_limit``, and acknowledges what it received every ``ack_every`` bytes and
on a keepalive timer. A link is attached with the peer's received count (learnt in
the resume handshake) and everything after it is sent again; the application
above never sees the break. Time is passed in (``handle_timer(now)``), as in
:mod:`remoteler.wire.connection`.

The adapter feeds link bytes to :meth:`receive`, takes :meth:`take_output` and
writes it to the link, and hands :class:`Data` / :class:`Eof` to the application.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from remoteler.resume.frames import (
    CONTROL,
    MAX_DATA,
    Frame,
    FrameParser,
    FrameType,
    ResumeProtocolError,
    decode_ack,
    encode,
    encode_ack,
)

__all__ = [
    "DEFAULT_BUFFER",
    "Control",
    "Data",
    "Eof",
    "LinkDead",
    "ReplayOverflow",
    "ResumeStream",
]

#: Replay buffer per direction (``--resume-buffer``): what a break may cost in memory.
DEFAULT_BUFFER = 4 << 20
#: Bytes the application may queue beyond the replay buffer (SSH above does not stop
#: writing when asked: only its channel windows bound it, 8 MiB each).
DEFAULT_QUEUE = 64 << 20
#: Send something (an ACK) on an attached link idle this long, so the peer sees it alive.
KEEPALIVE = 5.0
#: Nothing received on an attached link for this long: it is dead, resume on another.
DEAD_AFTER = 15.0


class ReplayOverflow(Exception):
    """More bytes waiting for acknowledgement than allowed: the session must end."""


@dataclass(frozen=True)
class Data:
    data: bytes


@dataclass(frozen=True)
class Eof:
    pass


@dataclass(frozen=True)
class Control:
    """A handshake frame (HELLO, RESUME, RESUMED, REFUSE) for the adapter."""

    frame: Frame


@dataclass(frozen=True)
class LinkDead:
    """The attached link was silent for ``dead_after`` seconds."""


Event = Data | Eof | Control


class ResumeStream:
    def __init__(
        self,
        buffer_limit: int = DEFAULT_BUFFER,
        *,
        queue_limit: int = DEFAULT_QUEUE,
        ack_every: int | None = None,
        keepalive: float = KEEPALIVE,
        dead_after: float = DEAD_AFTER,
    ) -> None:
        if buffer_limit < MAX_DATA:
            raise ValueError(f"buffer_limit must be at least {MAX_DATA}")
        self.buffer_limit = buffer_limit
        self.queue_limit = queue_limit
        # every half buffer: the writer keeps 2-4 MiB in flight, and each ACK restarts it
        # (an ACK every eighth cost 2-3x the CPU per MiB: docs/performance.md, resume)
        self.ack_every = ack_every or max(1, buffer_limit // 2)
        self.keepalive = keepalive
        self.dead_after = dead_after
        #: our stream: bytes written by the application (EOF counted as one)
        self.sent = 0
        #: what the peer has confirmed of our stream
        self.acked = 0
        #: bytes of the peer's stream delivered to the application (EOF counted)
        self.received = 0
        self.eof_sent = False
        self.eof_received = False
        #: replayed on the last attach (for the audit trail)
        self.replayed = 0
        self._replay: deque[bytes] = deque()
        #: written by the application, not yet numbered (the replay buffer was full)
        self._pending: deque[bytes] = deque()
        self.queued = 0
        self._eof_pending = False
        self._head = 0  # offset of _replay[0][0] in our stream (== acked)
        self._eof_at: int | None = None
        self._acked_out = 0  # the last received count we told the peer
        self._out: list[bytes] = []
        self._parser = FrameParser()
        self._attached = False
        self._last_rx = 0.0
        self._last_tx = 0.0

    # state -------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._attached

    @property
    def unacked(self) -> int:
        return self.sent - self.acked

    @property
    def eof_written(self) -> bool:
        """The application ended its stream (its EOF may still wait to be numbered)."""
        return self.eof_sent or self._eof_pending

    @property
    def finished(self) -> bool:
        """Both ends of stream delivered and ours confirmed: nothing left to resume."""
        return self.eof_received and self.eof_sent and self.acked == self.sent

    # application side ----------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue ``data``: numbered and sent as the replay buffer has room, kept until
        acknowledged. Raises ReplayOverflow past ``queue_limit`` bytes waiting."""
        if self.eof_sent or self._eof_pending:
            raise ResumeProtocolError("write after end of stream")
        if not data:
            return
        if self.queued + len(data) > self.queue_limit:
            raise ReplayOverflow(
                f"{self.queued + len(data)} bytes waiting for the peer's acknowledgement, "
                f"more than {self.queue_limit}"
            )
        self._pending.append(bytes(data))
        self.queued += len(data)
        self._admit()

    def write_eof(self) -> None:
        if self.eof_sent or self._eof_pending:
            return
        self._eof_pending = True
        self._admit()

    def _admit(self) -> None:
        """Move queued bytes into the numbered stream while the replay buffer has room."""
        while self._pending and self.unacked < self.buffer_limit:
            room = min(self.buffer_limit - self.unacked, MAX_DATA)
            head = self._pending[0]
            if len(head) <= room:
                chunk = self._pending.popleft()
            else:
                chunk, self._pending[0] = head[:room], head[room:]
            self.queued -= len(chunk)
            self._replay.append(chunk)
            self.sent += len(chunk)
            if self._attached:
                self._out.append(encode(FrameType.DATA, chunk))
        if self._eof_pending and not self._pending:
            self._eof_pending = False
            self.eof_sent = True
            self._eof_at = self.sent
            self.sent += 1
            if self._attached:
                self._out.append(encode(FrameType.EOF))

    # link side ---------------------------------------------------------------
    def attach(self, peer_received: int, now: float, told: int | None = None) -> None:
        """Start sending on a new link, from the peer's received count (the handshake's).

        ``told``: the received count our own handshake frame gave the peer, when we
        received more since (DATA right behind the peer's answer): those are acked now.
        """
        if not self.acked <= peer_received <= self.sent:
            raise ResumeProtocolError(
                f"peer has {peer_received} bytes, we hold {self.acked}..{self.sent}"
            )
        self._ack(peer_received)
        self._out.clear()
        self._attached = True
        self._last_rx = self._last_tx = now
        self.replayed = self.sent - self.acked
        self._out.extend(encode(FrameType.DATA, chunk) for chunk in self._replay)
        if self._eof_at is not None and self.acked <= self._eof_at:
            self._out.append(encode(FrameType.EOF))
        self._acked_out = self.received if told is None else told
        if self.received > self._acked_out:
            self._out.append(encode_ack(self.received))
            self._acked_out = self.received

    def detach(self) -> None:
        """The link is gone: keep everything, send nothing until the next attach.

        The next link's bytes start a fresh parse (what was half-read is resent).
        """
        self._attached = False
        self._parser.reset()
        self._out.clear()

    def send_control(self, data: bytes) -> None:
        """Queue an already encoded handshake frame, ahead of data."""
        self._out.insert(0, data)

    def receive(self, data: bytes, now: float) -> list[Event]:
        """Bytes from the link; raises ResumeProtocolError on garbage.

        Before :meth:`attach` only the handshake is expected, but DATA right after the
        peer's handshake frame (in the same read) is already numbered correctly.
        """
        self._last_rx = now
        events: list[Event] = []
        for frame in self._parser.feed(data):
            if frame.type == FrameType.DATA:
                if self.eof_received:
                    raise ResumeProtocolError("DATA after EOF")
                self.received += len(frame.payload)
                events.append(Data(frame.payload))
            elif frame.type == FrameType.ACK:
                count = decode_ack(frame.payload)
                if not self.acked <= count <= self.sent:
                    raise ResumeProtocolError(f"ACK {count} outside {self.acked}..{self.sent}")
                self._ack(count)
            elif frame.type == FrameType.EOF:
                if self.eof_received:
                    raise ResumeProtocolError("second EOF")
                self.eof_received = True
                self.received += 1
                events.append(Eof())
                self._out.append(encode_ack(self.received))  # let the sender finish now
                self._acked_out = self.received
            elif frame.type in CONTROL:
                events.append(Control(frame))
        if self.received - self._acked_out >= self.ack_every:
            self._out.append(encode_ack(self.received))
            self._acked_out = self.received
        return events

    def take_output(self, now: float) -> list[bytes]:
        out, self._out = self._out, []
        if out:
            self._last_tx = now
        return out

    def _ack(self, count: int) -> None:
        self.acked = max(self.acked, count)
        data_end = self._eof_at if self._eof_at is not None else self.sent
        upto = min(self.acked, data_end)
        while self._replay and self._head + len(self._replay[0]) <= upto:
            self._head += len(self._replay.popleft())
        if self._replay and upto > self._head:
            cut = upto - self._head
            self._replay[0] = self._replay[0][cut:]
            self._head = upto
        self._admit()

    # timers ------------------------------------------------------------------
    def get_timer(self) -> float | None:
        if not self._attached:
            return None
        return min(self._last_tx + self.keepalive, self._last_rx + self.dead_after)

    def handle_timer(self, now: float) -> LinkDead | None:
        if not self._attached:
            return None
        if now - self._last_rx >= self.dead_after:
            return LinkDead()
        if now - self._last_tx >= self.keepalive:
            self._out.append(encode_ack(self.received))
            self._acked_out = self.received
        return None
