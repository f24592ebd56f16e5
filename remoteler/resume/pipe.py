"""The asyncio adapter: a :class:`~remoteler.sshio.BytePipe` whose link can be swapped.

SSH (asyncssh through :class:`~remoteler.sshio.PipeTransport`, or the forward-mode
copy loop) reads and writes a :class:`ResumablePipe` as it would any pipe. Under
it, :class:`~remoteler.resume.stream.ResumeStream` numbers the bytes; the link
(a websocket at ``tsh``, a tunnel channel at the device) is attached with the
peer's received count and replaced when it breaks. The owner is told of a break
(``on_detach``) and decides: ``tsh`` dials again, the device waits for the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable

from remoteler.resume.frames import ResumeProtocolError
from remoteler.resume.stream import (
    Control,
    Data,
    Eof,
    Event,
    LinkDead,
    ReplayOverflow,
    ResumeStream,
)
from remoteler.sshio import BytePipe

__all__ = ["ResumablePipe"]

log = logging.getLogger("remoteler.resume")

#: Bytes received and not yet read by SSH before the link is not read any more
#: (the link's own flow control then holds the peer back).
INBOX_LIMIT = 1 << 20


class ResumablePipe:
    def __init__(
        self,
        stream: ResumeStream,
        on_detach: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self._on_detach = on_detach
        self._clock = clock
        self._link: BytePipe | None = None
        self._pump: asyncio.Task[None] | None = None
        self._inbox: deque[bytes] = deque()
        self._inbox_bytes = 0
        self._eof_in = False
        self._readable = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._progress = asyncio.Event()
        self._timer = asyncio.ensure_future(self._timer_loop())
        #: why the session ended, once it has (no more resumes)
        self.ended: str | None = None
        #: why the session ended early, for SSH above (PipeTransport passes it on)
        self.failure: str | None = None
        self.closed_locally = False
        self.detached_at: float | None = None

    # state -------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        return self._link is not None

    @property
    def link(self) -> BytePipe | None:
        return self._link

    # the owner's side --------------------------------------------------------
    def attach(
        self,
        link: BytePipe,
        peer_received: int,
        events: list[Event],
        control: bytes | None = None,
        told: int | None = None,
    ) -> None:
        """Carry on over ``link``: ``control`` (a handshake frame) goes first, then what
        the peer has not received; ``events`` are what was read past the handshake,
        ``told`` the received count our handshake frame gave (ResumeStream.attach)."""
        if self.ended is not None:
            link.close()
            return
        self.stream.attach(peer_received, self._clock(), told)
        if control is not None:
            self.stream.send_control(control)
        self._link = link
        self.detached_at = None
        self._deliver(events)
        self._flush()
        self._pump = asyncio.ensure_future(self._pump_link(link))
        self._wake_all()

    def detach(self, reason: str) -> None:
        """Drop the current link (if any); the session itself lives on."""
        link, self._link = self._link, None
        if link is None:
            return
        self.stream.detach()
        self.detached_at = self._clock()
        pump, self._pump = self._pump, None
        if pump is not None and pump is not asyncio.current_task():
            pump.cancel()
        link.close()
        self._wake_all()
        if self.ended is None:
            self._on_detach(reason)

    def end(self, reason: str, *, failed: bool = False) -> None:
        """The session is over: nothing more is sent or resumed. ``failed``: it ended
        before SSH above finished, and ``reason`` is what the user reads."""
        if self.ended is not None:
            return
        self.ended = reason
        if failed:
            self.failure = reason
        link, self._link = self._link, None
        if link is not None:
            self._flush_to(link)
            link.close()
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()
        self._timer.cancel()
        self._eof_in = True
        self._wake_all()

    # BytePipe ----------------------------------------------------------------
    async def recv(self) -> bytes:
        while not self._inbox:
            if self._eof_in:
                return b""
            self._readable.clear()
            await self._readable.wait()
        data = self._inbox.popleft()
        self._inbox_bytes -= len(data)
        if self._inbox_bytes < INBOX_LIMIT:
            self._room.set()
        return data

    def send(self, data: bytes) -> None:
        if self.ended is not None or self.stream.eof_written:
            return
        try:
            self.stream.write(data)
        except ReplayOverflow as exc:
            log.warning("resumable session ended: %s", exc)
            self.end(f"the replay buffer overflowed ({exc})", failed=True)
            return
        self._flush()

    def buffered(self) -> int:
        link = self._link.buffered() if self._link is not None else 0
        return link + self.stream.queued

    async def drain(self) -> None:
        """Until what was written is numbered (the replay buffer took it) and the link
        took it; while detached, until a link is back."""
        while self.ended is None and (self._link is None or self.stream.queued):
            self._progress.clear()
            await self._progress.wait()
        if self._link is not None:
            with contextlib.suppress(Exception):
                await self._link.drain()

    async def wait_delivered(self) -> None:
        """Until the peer confirmed everything we wrote (across breaks), or the end."""
        while self.ended is None and (self.stream.unacked or self.stream.queued):
            self._progress.clear()
            await self._progress.wait()

    def send_eof(self) -> None:
        if self.ended is None:
            self.stream.write_eof()
            self._flush()

    def close(self) -> None:
        """SSH above is done with the pipe: end our stream; the owner ends the session."""
        self.closed_locally = True
        self.send_eof()
        self._wake_all()

    # internals -----------------------------------------------------------------
    def _wake_all(self) -> None:
        self._readable.set()
        self._progress.set()
        self._room.set()

    def _deliver(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Data):
                self._inbox.append(event.data)
                self._inbox_bytes += len(event.data)
            elif isinstance(event, Eof):
                self._eof_in = True
            elif isinstance(event, Control):
                raise ResumeProtocolError(f"{event.frame.type.name} on an attached link")
        if self._inbox_bytes >= INBOX_LIMIT:
            self._room.clear()
        self._readable.set()
        self._progress.set()  # an ACK may have freed the replay buffer

    def _flush(self) -> None:
        if self._link is not None:
            self._flush_to(self._link)

    def _flush_to(self, link: BytePipe) -> None:
        for frame in self.stream.take_output(self._clock()):
            link.send(frame)

    async def _pump_link(self, link: BytePipe) -> None:
        reason = "the link closed"
        try:
            while True:
                await self._room.wait()
                data = await link.recv()
                if not data:
                    break
                if link is not self._link:
                    return
                self._deliver(self.stream.receive(data, self._clock()))
                self._flush()
        except ResumeProtocolError as exc:
            reason = f"the link sent garbage ({exc})"
        except (ConnectionError, OSError) as exc:
            reason = f"the link failed ({exc})"
        if link is self._link:
            self.detach(reason)

    async def _timer_loop(self) -> None:
        while True:
            when = self.stream.get_timer()
            now = self._clock()
            await asyncio.sleep(1.0 if when is None else min(1.0, max(0.05, when - now)))
            if self._link is None:
                continue
            event = self.stream.handle_timer(self._clock())
            if isinstance(event, LinkDead):
                self.detach(f"nothing came over the link for {self.stream.dead_after:.0f} s")
            else:
                self._flush()
