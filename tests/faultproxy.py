"""A fault-injecting TCP proxy on loopback, for tests and benchmarks.

Put it between an edge agent and the hub (the agent dials the proxy, the proxy
dials the hub) and break the link at will while connections are open:

* :meth:`FaultProxy.delay` adds one-way latency to each direction, order kept;
* :meth:`FaultProxy.bandwidth` caps each direction of each connection; with
  ``link_buffer`` (constructor) the capped link holds that many bytes per
  direction, as a modem's queue, instead of the proxy's 4 MiB and the kernel's
  socket buffers, so a sender's own queues show (docs/tunnels.md, *Slow links*);
* :meth:`FaultProxy.reset` aborts every open connection with a TCP RST on both sides;
* :meth:`FaultProxy.blackhole` silently drops every byte (and FIN) both ways while
  the sockets stay open, as a NAT that forgot the mapping or a dead radio link;
* :meth:`FaultProxy.clear` ends all faults.

Faults apply to connections already open and to new ones. A connection whose bytes
were dropped stays broken after the blackhole ends (TLS cannot recover a lost
record): the endpoints must notice, by their heartbeats, and reconnect.

Two ways to run it::

    with FaultProxy("127.0.0.1", hub_port) as proxy:   # own event loop in a thread
        ...                                            # (synchronous tests)

    async with FaultProxy("127.0.0.1", port) as proxy: # on the running loop
        ...                                            # (async tests)

The fault methods may be called from any thread; when they return, the fault is
in effect. Only 127.0.0.1 is ever listened on or dialled.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["FaultProxy", "Stats"]

LOOPBACK = "127.0.0.1"
READ_SIZE = 64 * 1024
#: Bytes held per direction (delay, cap) before the proxy stops reading the sender.
QUEUE_LIMIT = 4 << 20
T = TypeVar("T")


@dataclass
class Stats:
    """Counters since the proxy started (a snapshot: see :attr:`FaultProxy.stats`)."""

    accepted: int = 0
    """Connections accepted from clients."""
    open: int = 0
    """Connections open now."""
    bytes_up: int = 0
    """Bytes delivered client -> target."""
    bytes_down: int = 0
    """Bytes delivered target -> client."""
    dropped: int = 0
    """Bytes read and thrown away by a blackhole (both ways)."""
    resets: int = 0
    """Connections aborted with RST by :meth:`FaultProxy.reset`."""


class _Pipe:
    """One direction of one connection: read, timestamp, hold for the delay, write."""

    def __init__(
        self,
        proxy: FaultProxy,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up: bool,
    ) -> None:
        self.proxy, self.reader, self.writer, self.up = proxy, reader, writer, up
        # (arrival time, chunk); b"" is the peer's FIN
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued_bytes = 0
        self.queued = asyncio.Event()
        self.room = asyncio.Event()
        #: the FIN went through, or was lost in a blackhole: this direction is over
        self.finished = False

    async def read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        link = self.proxy.link_buffer
        limit = QUEUE_LIMIT if link is None else max(1, link // 4)
        while True:
            while self.queued_bytes >= limit:  # backpressure, as a full router queue
                self.room.clear()
                await self.room.wait()
            data = await self.reader.read(min(READ_SIZE, limit - self.queued_bytes))
            if self.proxy._blackhole:
                self.proxy._stats.dropped += len(data)
                if not data:  # the FIN is lost too; nothing more will come
                    self.finished = True
                    return
                continue
            self.queue.append((loop.time(), data))
            self.queued_bytes += len(data)
            self.queued.set()
            if not data:
                return

    async def write_loop(self) -> None:
        proxy, loop = self.proxy, asyncio.get_running_loop()
        while True:
            while not self.queue:
                self.queued.clear()
                await self.queued.wait()
            arrived, data = self.queue[0]
            # Hold the chunk until arrival + delay; a change of fault wakes us early.
            while (wait := arrived + proxy._delay - loop.time()) > 0 and not proxy._blackhole:
                await proxy._wait_change(wait)
            self.queue.popleft()
            self.queued_bytes -= len(data)
            self.room.set()
            if proxy._blackhole:
                proxy._stats.dropped += len(data)
                if not data:
                    self.finished = True
                    return
                continue
            if not data:
                if self.writer.can_write_eof():
                    self.writer.write_eof()
                self.finished = True
                return
            await self._send(data)

    async def _send(self, data: bytes) -> None:
        proxy, view = self.proxy, memoryview(data)
        while view:
            rate = proxy._rate
            # Slices of ~50 ms worth of bytes keep a capped stream smooth.
            n = len(view) if rate is None else max(1, min(len(view), int(rate / 20)))
            piece, view = view[:n], view[n:]
            self.writer.write(piece)
            await self.writer.drain()
            if self.up:
                proxy._stats.bytes_up += n
            else:
                proxy._stats.bytes_down += n
            if rate is not None:
                await asyncio.sleep(n / rate)
            if proxy._blackhole:  # switched on mid-chunk: the rest is lost
                proxy._stats.dropped += len(view)
                return


class _Conn:
    """One proxied connection: two pipes, aborted together on error or reset."""

    def __init__(
        self,
        proxy: FaultProxy,
        c_reader: asyncio.StreamReader,
        c_writer: asyncio.StreamWriter,
        t_reader: asyncio.StreamReader,
        t_writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.writers = (c_writer, t_writer)
        self.pipes = (
            _Pipe(proxy, c_reader, t_writer, up=True),
            _Pipe(proxy, t_reader, c_writer, up=False),
        )
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        self.tasks = tasks = [
            asyncio.ensure_future(coro)
            for pipe in self.pipes
            for coro in (pipe.read_loop(), pipe.write_loop())
        ]
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(t.exception() for t in done if not t.cancelled()):
                    self.abort()  # one side failed: the other sees a reset, as through a router
                    return
                if all(p.finished for p in self.pipes):
                    return  # both FINs forwarded (or lost in a blackhole)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.close()

    def abort(self) -> None:
        """Close both sockets with SO_LINGER 0: each peer gets a RST."""
        for writer in self.writers:
            _abort(writer)
        for task in self.tasks:
            task.cancel()

    def close(self) -> None:
        for writer in self.writers:
            if not writer.is_closing():
                writer.close()


class FaultProxy:
    """Listen on 127.0.0.1 (port 0), forward each connection to ``target``, inject faults."""

    def __init__(self, target_host: str, target_port: int, link_buffer: int | None = None) -> None:
        if target_host not in (LOOPBACK, "localhost"):
            raise ValueError("the fault proxy only forwards to loopback")
        self.target = (LOOPBACK, target_port)
        #: bytes each direction holds (proxy queue + receive buffer), None: 4 MiB + kernel's
        self.link_buffer = link_buffer
        self.port = 0
        self._delay = 0.0
        self._rate: float | None = None
        self._blackhole = False
        self._stats = Stats()
        self._conns: set[_Conn] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def addr(self) -> str:
        """``127.0.0.1:PORT`` to give the client instead of the target."""
        return f"{LOOPBACK}:{self.port}"

    @property
    def stats(self) -> Stats:
        return self._call(lambda: Stats(**{**vars(self._stats), "open": len(self._conns)}))

    # -- faults (any thread) --------------------------------------------------

    def delay(self, seconds: float) -> None:
        """Add ``seconds`` of one-way latency to each direction (0 for none)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._call(lambda: self._set(delay=seconds))

    def bandwidth(self, bytes_per_second: float | None) -> None:
        """Cap each direction of each connection; ``None`` for no cap."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bandwidth must be > 0 (or None)")
        self._call(lambda: self._set(rate=bytes_per_second))

    def blackhole(self, on: bool = True) -> None:
        """Drop everything both ways (sockets stay open) while ``on``."""
        self._call(lambda: self._set(blackhole=on))

    def reset(self) -> int:
        """Abort every open connection with a RST to both peers; return how many."""
        return self._call(self._reset)

    def clear(self) -> None:
        """No delay, no cap, no blackhole. Connections broken by a blackhole stay broken."""
        self._call(lambda: self._set(delay=0.0, rate=None, blackhole=False))

    # -- life cycle -----------------------------------------------------------

    async def astart(self) -> FaultProxy:
        """Listen on the running loop (async use); :meth:`aclose` stops."""
        self._changed = asyncio.Event()
        listener = self._socket()
        listener.bind((LOOPBACK, 0))  # accepted sockets inherit its receive buffer
        self._server = await asyncio.start_server(
            self._handle, sock=listener, limit=self._reader_limit()
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def aclose(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.abort()
        # Aborted connections end their handlers; cancel only one still dialling the target
        # (asyncio's server logs a cancelled handler as an error).
        if self._handlers:
            _, late = await asyncio.wait(set(self._handlers), timeout=5)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def start(self) -> FaultProxy:
        """Run the proxy on its own event loop in a daemon thread; :meth:`stop` ends it."""
        loop = asyncio.new_event_loop()
        ready: list[BaseException | None] = []
        started = threading.Event()

        def main() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.astart())
                ready.append(None)
            except BaseException as exc:
                ready.append(exc)
            started.set()
            if ready[0] is None:
                loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=main, name="faultproxy", daemon=True)
        self._thread.start()
        started.wait()
        if ready[0] is not None:
            raise ready[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> FaultProxy:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- internals (loop thread) ----------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the proxy's loop and return its result."""
        loop = self._loop
        if loop is None or self._on_loop_thread():
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(timeout=10)

    def _on_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def _set(self, **changes: Any) -> None:
        if "delay" in changes:
            self._delay = float(changes["delay"])
        if "rate" in changes:
            self._rate = None if changes["rate"] is None else float(changes["rate"])
        if "blackhole" in changes:
            self._blackhole = bool(changes["blackhole"])
        if self._changed is not None:  # wake writers holding chunks for the old delay
            self._changed.set()
            self._changed = asyncio.Event()

    def _reader_limit(self) -> int:
        """StreamReader's limit: it reads ahead up to twice this before pausing."""
        return 64 * 1024 if self.link_buffer is None else max(1, self.link_buffer // 16)

    def _socket(self) -> socket.socket:
        """A TCP socket whose receive buffer is small when the link's buffer is.

        With ``link_buffer`` the bytes a direction holds are about: the kernel's
        receive buffer (set to 1/2; Linux doubles it and keeps about half for
        overhead, so a window of ~1/2), the StreamReader's read-ahead (1/8) and the
        proxy's queue (1/4). A much smaller receive buffer makes loopback TCP stall
        on window updates (measured: 1 KiB carried 2.3 KB/s of a 10 KiB/s cap).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.link_buffer is not None:  # set before connect/listen: it sets the window
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, max(1, self.link_buffer // 2))
        return sock

    async def _wait_change(self, timeout: float) -> None:
        assert self._changed is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def _reset(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        self._stats.resets += len(conns)
        return len(conns)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._stats.accepted += 1
        try:
            sock = self._socket()
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, self.target)
            except BaseException:
                sock.close()
                raise
            t_reader, t_writer = await asyncio.open_connection(
                sock=sock, limit=self._reader_limit()
            )
        except (OSError, asyncio.CancelledError):
            _abort(c_writer)  # target down: the client sees a reset, as from a router
            self._handlers.discard(task)
            return
        conn = _Conn(self, c_reader, c_writer, t_reader, t_writer)
        self._conns.add(conn)
        try:
            await conn.run()
        finally:
            self._conns.discard(conn)
            self._handlers.discard(task)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0, so the peer gets a RST instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
