"""The client end of a resumable session (docs/resume.md): ``tsh ssh``, ``scp``, ``proxy ssh``.

:func:`open_pipe` dials ``/v1/connect?...&resume=new``. A device that speaks the
resumable stream answers with HELLO first; anything else is an older hub or agent
(or a node recorded at the hub) and the bytes are plain SSH, as before.

When the link breaks, :class:`Resumer` dials again (through any hub: the address
given is usually a load balancer) with backoff for as long as the device keeps
the session (its grace), sending the session id, the current token and the count
of bytes received; the device answers with its own count and the next token, and
both replay what the other missed. One status line on stderr says what happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from remoteler.errors import AccessDenied, AuthError, NodeError, RemotelerError, TrustError
from remoteler.identity import UserIdentity
from remoteler.resume.frames import FrameType, ResumeProtocolError
from remoteler.resume.handshake import (
    HELLO_BYTE,
    Hello,
    Resume,
    parse_hello,
    parse_resumed,
    resume_frame,
)
from remoteler.resume.pipe import ResumablePipe
from remoteler.resume.stream import Control, Event, ResumeStream
from remoteler.sshio import BytePipe, WebSocketPipe
from remoteler.text import printable

__all__ = ["PlainPipe", "Resumer", "hangup_ends_sessions", "open_pipe"]

#: set by the CLI: SIGHUP/SIGTERM end a resumable session for good (see Resumer)
_hangup_ends = False


def hangup_ends_sessions() -> None:
    """tsh's own process: a hang-up (the terminal closed, OpenSSH ending its
    ProxyCommand) or SIGTERM means the user is gone, not the link: tell the device,
    so it ends the session now instead of keeping it for the grace."""
    global _hangup_ends
    _hangup_ends = True


#: close codes after which a session is over whatever the stream says (hub/api/server.py)
FINAL_CLOSE_CODES = (4401, 4403)
#: The first answer on a link (HELLO, RESUMED) must come within this.
HANDSHAKE_TIMEOUT = 20.0
#: Redial backoff: short steps first (an agent reconnecting after a reset is usually
#: back within a second), then longer, jittered, up to BACKOFF_MAX.
BACKOFF_FIRST, BACKOFF_FACTOR, BACKOFF_MAX = 0.2, 1.5, 5.0
#: Our replay buffer follows the device's, within these bounds.
MIN_BUFFER, MAX_BUFFER = 256 * 1024, 64 << 20
#: How long a hang-up waits for our end of stream to leave before the process dies.
HANGUP_FLUSH = 0.5

Dial = Callable[[str], Any]  # resume value -> awaitable websocket


class PlainPipe:
    """A link whose first chunk was already read (plain SSH, no resumption)."""

    def __init__(self, link: WebSocketPipe, first: bytes) -> None:
        self._link = link
        self._first: bytes | None = first

    async def recv(self) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            if first:
                return first
        return await self._link.recv()

    def send(self, data: bytes) -> None:
        self._link.send(data)

    def buffered(self) -> int:
        return self._link.buffered()

    async def drain(self) -> None:
        await self._link.drain()

    def send_eof(self) -> None:
        self._link.send_eof()

    def close(self) -> None:
        self._link.close()

    @property
    def close_reason(self) -> str:
        return self._link.close_reason


class Status:
    """The one status line on stderr while a session is detached."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.tty = sys.stderr.isatty()
        self._shown = False

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError):
            sys.stderr.write(text)
            sys.stderr.flush()

    def lost(self, seconds: float, reason: str) -> None:
        line = f"tsh: link to {self.node} lost, resuming… {seconds:.0f} s"
        if self.tty:
            self._write(("\r\n" if not self._shown else "\r") + line + "\x1b[K")
        elif not self._shown:
            self._write(f"tsh: link to {self.node} lost ({printable(reason, 200)}), resuming…\n")
        self._shown = True

    def outcome(self, text: str) -> None:
        line = f"tsh: {text}"
        self._write(("\r" + line + "\x1b[K\r\n") if self.tty else line + "\n")
        self._shown = False

    def clear(self) -> None:
        """Take the status line away (the caller's error line says the outcome)."""
        if self.tty and self._shown:
            self._write("\r\x1b[K")
        self._shown = False


class Resumer:
    """Owns a resumable session's pipe and dials again whenever its link breaks."""

    def __init__(self, node: str, dial: Dial, on_text: Callable[[str], None]) -> None:
        self.node = node
        self._dial = dial
        self._on_text = on_text
        self.pipe: ResumablePipe | None = None
        self.hello: Hello | None = None
        self.token = b""
        self.ws: Any = None
        self.status = Status(node)
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> BytePipe:
        """The first link: a resumable pipe, or the plain link if the device has none."""
        self.ws = await self._dial("new")
        link = WebSocketPipe(self.ws, on_text=self._on_text)
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            first = await link.recv()
        if not first or first[0] != HELLO_BYTE:
            return PlainPipe(link, first)
        stream = ResumeStream()
        frame, rest = await _handshake(link, stream, first)
        self.hello = parse_hello(frame)
        self.token = self.hello.token
        stream.buffer_limit = min(max(self.hello.buffer, MIN_BUFFER), MAX_BUFFER)
        stream.ack_every = max(1, stream.buffer_limit // 2)  # as the device's
        self.pipe = ResumablePipe(stream, self._detached)
        self.pipe.attach(link, 0, rest, told=0)
        if _hangup_ends:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGHUP, signal.SIGTERM):
                loop.add_signal_handler(sig, self._hangup, sig)
        return self.pipe

    def _hangup(self, sig: int) -> None:
        """End our stream (the device ends the session on it), give it a moment to go
        out, then die of the signal as we would have without this handler."""
        if self.pipe is not None:
            self.pipe.close()
        asyncio.get_running_loop().call_later(HANGUP_FLUSH, _die, sig)

    def _detached(self, reason: str) -> None:
        pipe = self.pipe
        assert pipe is not None
        code = getattr(self.ws, "close_code", None)
        said = getattr(self.ws, "close_reason", "") or ""
        if pipe.closed_locally or pipe.stream.eof_received:
            pipe.end("the session ended")
            return
        if code in FINAL_CLOSE_CODES:  # locked, or the certificate expired
            self._end(printable(said, 300) or reason)
            return
        self._task = asyncio.ensure_future(self._resume(reason))

    def _end(self, outcome: str) -> None:
        """The session is over: SSH above fails with ``outcome``, which tsh prints."""
        assert self.pipe is not None
        self.status.clear()
        self.pipe.end(outcome, failed=True)

    async def _resume(self, reason: str) -> None:
        assert self.pipe is not None and self.hello is not None
        pipe, hello = self.pipe, self.hello
        lost_at = time.monotonic()
        deadline = lost_at + hello.grace
        backoff = BACKOFF_FIRST
        last_error = reason
        ticker = asyncio.ensure_future(self._tick(lost_at, reason))
        try:
            while time.monotonic() < deadline and pipe.ended is None:
                try:
                    async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                        if await self._try_once(hello):
                            gap = time.monotonic() - lost_at
                            self.status.outcome(
                                f"resumed the session to {self.node} after {gap:.1f} s "
                                f"({pipe.stream.replayed} bytes replayed)"
                            )
                            return
                except (AccessDenied, AuthError, TrustError) as exc:
                    self._end(f"not resumed: {exc.message}")
                    return
                except _Refused as exc:
                    self._end(f"not resumed: {exc}")
                    return
                except ResumeProtocolError as exc:  # bytes may be counted: never guess on
                    self._end(f"not resumed: bad answer to the resume ({exc})")
                    return
                except (RemotelerError, TimeoutError, OSError) as exc:
                    last_error = str(getattr(exc, "message", "") or exc or type(exc).__name__)
                wait = min(backoff, max(0.0, deadline - time.monotonic()))
                await asyncio.sleep(wait * random.uniform(0.8, 1.2))
                backoff = min(BACKOFF_MAX, backoff * BACKOFF_FACTOR)
            if pipe.ended is None:
                self._end(
                    f"not back within the device's {hello.grace:.0f} s resume grace; "
                    f"last error: {printable(last_error, 200)}"
                )
        finally:
            ticker.cancel()

    async def _tick(self, lost_at: float, reason: str) -> None:
        while True:
            self.status.lost(time.monotonic() - lost_at, reason)
            await asyncio.sleep(1.0)

    async def _try_once(self, hello: Hello) -> bool:
        assert self.pipe is not None
        ws = await self._dial(hello.session_id)
        link = WebSocketPipe(ws, on_text=self._on_text)
        stream = self.pipe.stream
        stream.detach()  # a fresh parse: an earlier try may have left half a frame
        told = stream.received
        link.send(resume_frame(Resume(hello.session_id, self.token, told)))
        try:
            frame, rest = await _handshake(link, stream, None)
        except BaseException:
            link.close()
            raise
        if frame.type == FrameType.REFUSE:
            link.close()
            raise _Refused(printable(frame.payload.decode("utf-8", "replace"), 300))
        answer = parse_resumed(frame)
        self.token = answer.token
        self.ws = ws
        self.pipe.attach(link, answer.received, rest, told=told)
        return True


class _Refused(Exception):
    pass


def _die(sig: int) -> None:
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)


async def _handshake(
    link: WebSocketPipe, stream: ResumeStream, first: bytes | None
) -> tuple[Any, list[Event]]:
    """Read until the peer's handshake frame; return it and the events after it."""
    data = first
    while True:
        if data is None:
            data = await link.recv()
            if not data:
                raise NodeError(link.close_reason or "the hub closed the link during the resume")
        events = stream.receive(data, time.monotonic())
        data = None
        for i, event in enumerate(events):
            if isinstance(event, Control):
                return event.frame, events[i + 1 :]
            raise ResumeProtocolError("data before the handshake")


async def open_pipe(
    hub: str, ident: UserIdentity, login: str, node: str, on_text: Callable[[str], None]
) -> tuple[BytePipe, Resumer]:
    """The byte pipe to ``node``'s SSH server, resumable if the device can."""
    from tsh.ssh import open_connect_ws

    async def dial(resume: str) -> Any:
        return await open_connect_ws(hub, ident, login, node, resume=resume)

    resumer = Resumer(node, dial, on_text)
    pipe = await resumer.open()
    return pipe, resumer
