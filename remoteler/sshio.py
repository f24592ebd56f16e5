"""Run asyncssh over a byte pipe instead of a TCP socket.

The SSH session is end to end between tsh and the device; in between it rides
a websocket (tsh to hub) and a tunnel channel (hub to agent). This module
adapts either pipe to an :class:`asyncio.Transport`, so asyncssh's client and
server connections run over them unchanged (``asyncssh.connect(tunnel=...)``
and ``asyncssh.connect_reverse(tunnel=...)``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from remoteler import sshalgs

#: The ciphers, preferred first (remoteler/sshalgs.py has every algorithm list).
CIPHERS = list(sshalgs.CIPHERS)
#: SSH channel window and largest packet we accept (asyncssh: 2 MiB / 32 KiB).
#: Bigger packets mean fewer per-packet Python calls on every hop.
SSH_WINDOW = 8 << 20
SSH_MAX_PACKET = 256 * 1024
HIGH_WATER = 1 << 20
#: Loop turns between the last bytes and the end of stream (see _settle).
SETTLE_TURNS = 3
#: Largest websocket message we send on the connect leg (the hub accepts up to 1 MiB).
MAX_MESSAGE = 256 * 1024


def messages(chunks: list[bytes], limit: int) -> Iterator[bytes | memoryview]:
    """``chunks`` regrouped into messages of at most ``limit`` bytes, in order: small
    ones joined, large ones sliced without a copy (joining everything queued and
    slicing that would copy every byte once more, and allocate it in one block)."""
    pending: list[bytes] = []
    size = 0
    for chunk in chunks:
        if pending and size + len(chunk) > limit:
            yield b"".join(pending)
            pending, size = [], 0
        if len(chunk) >= limit:
            view = memoryview(chunk)
            for start in range(0, len(chunk), limit):
                yield view[start : start + limit]
            continue
        pending.append(chunk)
        size += len(chunk)
    if pending:
        yield b"".join(pending)


class BytePipe(Protocol):
    async def recv(self) -> bytes:
        """Next chunk, or b"" at the end."""

    def send(self, data: bytes) -> None:
        """Queue bytes; never blocks."""

    def buffered(self) -> int: ...

    async def drain(self) -> None: ...

    def send_eof(self) -> None: ...

    def close(self) -> None: ...


class WebSocketPipe:
    """A websocket carrying raw bytes as binary messages (the ``/v1/connect`` leg).

    A text message ends the stream, unless ``on_text`` is given: then it is passed
    there (a notice line from the hub, :mod:`remoteler.notice`) and reading goes on.
    """

    def __init__(self, ws: Any, on_text: Callable[[str], None] | None = None) -> None:
        self._ws = ws
        self._on_text = on_text
        self._queue: list[bytes] = []
        self._size = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._writer = asyncio.ensure_future(self._write_loop())

    async def _write_loop(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    chunks, self._queue = self._queue, []
                    self._size = 0
                    for message in messages(chunks, MAX_MESSAGE):
                        await self._ws.send(message)
                self._idle.set()
                if self._closed:
                    break
        except ConnectionClosed:
            self._queue.clear()
            self._size = 0
            self._idle.set()
        finally:
            with contextlib.suppress(Exception):
                await self._ws.close()

    async def recv(self) -> bytes:
        from websockets.exceptions import ConnectionClosed

        while True:
            try:
                data = await self._ws.recv()
            except ConnectionClosed:
                return b""
            if isinstance(data, bytes):
                return data
            if self._on_text is None:
                return b""
            self._on_text(data)

    def send(self, data: bytes) -> None:
        if self._closed or self._writer.done():
            return
        self._queue.append(bytes(data))
        self._size += len(data)
        self._idle.clear()
        self._wake.set()

    def buffered(self) -> int:
        return self._size

    async def drain(self) -> None:
        await self._idle.wait()

    def send_eof(self) -> None:
        self._closed = True  # nothing more is sent; reading goes on

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    @property
    def close_code(self) -> int | None:
        code = getattr(self._ws, "close_code", None)
        return code if isinstance(code, int) else None

    @property
    def close_reason(self) -> str:
        # websockets' asyncio connection says it as close_reason (there is no close_rcvd).
        rcvd = getattr(self._ws, "close_rcvd", None)
        return str(getattr(rcvd, "reason", "") or getattr(self._ws, "close_reason", "") or "")


class ChannelPipe:
    """A tunnel channel (the hub-to-agent leg), from :mod:`remoteler.wire.aio`."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    async def recv(self) -> bytes:
        data: bytes = await self._channel.read()
        return data

    def send(self, data: bytes) -> None:
        if not self._channel.is_closed:
            with contextlib.suppress(Exception):
                self._channel.write(bytes(data))

    def buffered(self) -> int:
        return int(self._channel.buffered_amount)

    async def drain(self) -> None:
        with contextlib.suppress(Exception):
            await self._channel.drain()

    def send_eof(self) -> None:
        with contextlib.suppress(Exception):
            self._channel.write_eof()

    def close(self) -> None:
        self._channel.close()


async def _settle() -> None:
    """Give the protocol's own callbacks a few loop turns before it hears of the end.

    A socket's end of stream is a read event of its own, after the callbacks that the
    last data_received scheduled; a pipe may hand over its last bytes and its end at
    once. asyncssh handles some packets (KEXINIT) in a task: without these turns the
    end would overtake it, and a refused key exchange read as "Connection lost".
    """
    for _ in range(SETTLE_TURNS):
        await asyncio.sleep(0)


class PipeTransport(asyncio.Transport):
    """An asyncio transport over a :class:`BytePipe`."""

    def __init__(self, pipe: BytePipe, extra: dict[str, Any] | None = None) -> None:
        super().__init__(extra)
        self._pipe = pipe
        self._protocol: asyncio.Protocol | None = None
        self._closing = False
        self._lost = False
        self._paused_writing = False
        self._reading = asyncio.Event()
        self._reading.set()
        self._reader: asyncio.Future[None] | None = None
        self._drainer: asyncio.Future[None] | None = None

    def start(self, protocol: asyncio.Protocol) -> None:
        self._protocol = protocol
        protocol.connection_made(self)
        self._reader = asyncio.ensure_future(self._read_loop())

    async def _read_loop(self) -> None:
        assert self._protocol is not None
        try:
            while not self._closing:
                await self._reading.wait()
                data = await self._pipe.recv()
                if not data:
                    break
                self._protocol.data_received(data)
            await _settle()
            if not self._closing and getattr(self._pipe, "failure", None) is None:
                self._protocol.eof_received()  # (a failure is passed to connection_lost)
        finally:
            self._connection_lost()

    def _connection_lost(self) -> None:
        if not self._lost and self._protocol is not None:
            self._lost = True
            self._closing = True
            self._pipe.close()
            # a pipe that knows why it failed (a session not resumed) says so to SSH above
            failure = getattr(self._pipe, "failure", None)
            exc: Exception | None = None
            if isinstance(failure, str):
                import asyncssh  # loaded already: the protocol above is asyncssh's

                exc = asyncssh.ConnectionLost(failure)
            self._protocol.connection_lost(exc)

    # asyncio.Transport -------------------------------------------------------
    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._pipe.close()
        if self._reader is not None:
            self._reader.cancel()
        asyncio.get_running_loop().call_soon(self._connection_lost)

    def abort(self) -> None:
        self.close()

    def is_reading(self) -> bool:
        return self._reading.is_set()

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._pipe.send(bytes(data))
        if not self._paused_writing and self._pipe.buffered() > HIGH_WATER:
            self._paused_writing = True
            assert self._protocol is not None
            self._protocol.pause_writing()
            self._drainer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        await self._pipe.drain()
        self._paused_writing = False
        if self._protocol is not None and not self._lost:
            self._protocol.resume_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._pipe.send_eof()

    def get_write_buffer_size(self) -> int:
        return self._pipe.buffered()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class PipeTunnel:
    """What asyncssh's ``tunnel=`` argument needs: ``create_connection`` over one pipe."""

    def __init__(self, pipe: BytePipe, extra: dict[str, Any] | None = None) -> None:
        self._pipe = pipe
        self._extra = extra or {}
        self.transport: PipeTransport | None = None

    async def create_connection(
        self, session_factory: Callable[[], Any], host: str, port: int
    ) -> tuple[PipeTransport, Any]:
        protocol = session_factory()
        self.transport = PipeTransport(self._pipe, self._extra)
        self.transport.start(protocol)
        return self.transport, protocol

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        return None


class StreamPipe:
    """An asyncio TCP stream (the agent's ``--local-listen`` for technicians on site)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def recv(self) -> bytes:
        try:
            return await self._reader.read(256 * 1024)
        except (ConnectionError, OSError):
            return b""

    def send(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)

    def buffered(self) -> int:
        return self._writer.transport.get_write_buffer_size()

    async def drain(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.drain()

    def send_eof(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            if self._writer.can_write_eof():
                self._writer.write_eof()

    def close(self) -> None:
        self._writer.close()
