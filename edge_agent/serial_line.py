"""Serial ports on the event loop: pyserial opens and configures, the loop moves bytes.

pyserial opens the port raw (``cfmakeraw``-like termios on POSIX), non-blocking
(``O_NONBLOCK``) and exclusive (``flock``), and sets the baud rate and the break
condition; reads and writes go straight to its file descriptor through
``loop.add_reader``/``add_writer``, so no thread waits on a port. pyserial is
imported when the first console opens: an agent without consoles never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edge_agent.serial_ports import ConsoleRefused, ConsoleRequest, Holder, PortTable
from remoteler.console import Mode

log = logging.getLogger("remoteler.agent.serial")

READ_SIZE = 64 * 1024
#: Output kept while nobody is subscribed yet (the console's audit start is awaited
#: between the open and the subscription); the newest bytes win.
BACKLOG = 64 * 1024
#: Input held for a port that is not taking it; past this the writer's channel pauses.
WRITE_HIGH_WATER = 64 * 1024


@dataclass(frozen=True)
class _Subscriber:
    output: Callable[[bytes], None]
    gone: Callable[[str], None]


class SerialLine:
    """One open port, shared by the consoles holding it (one writer, any viewers).

    Output read from the port goes to every subscriber; input comes from the
    writer only. If the port goes away (unplugged, or the other end of a pty
    closed), every subscriber's ``gone`` is called with a reason for the user.
    """

    def __init__(self, path: str, baud: int) -> None:
        import serial  # pyserial, lazily (see the module docstring)

        self.path = path
        self._serial: Any = serial.Serial(
            path, baudrate=baud, timeout=0, write_timeout=0, exclusive=True
        )
        self.fd: int = self._serial.fileno()
        os.set_blocking(self.fd, False)
        self._loop = asyncio.get_running_loop()
        self._subscribers: dict[object, _Subscriber] = {}
        self._pending = bytearray()
        self._backlog = bytearray()
        self._drained: list[Callable[[], None]] = []
        self._break_end: asyncio.TimerHandle | None = None
        self.closed = False
        self._loop.add_reader(self.fd, self._readable)

    @property
    def baud(self) -> int:
        return int(self._serial.baudrate)

    def set_baud(self, baud: int) -> None:
        """Apply ``baud`` now (pyserial re-runs tcsetattr); OSError if the port refuses it."""
        self._serial.baudrate = baud

    def send_break(self, seconds: float) -> None:
        """Hold the line in break for ``seconds`` (TIOCSBRK, then TIOCCBRK from a timer).

        pyserial's ``send_break`` would block the loop in ``tcsendbreak``.
        """
        if self._break_end is not None:
            self._break_end.cancel()
        self._serial.break_condition = True
        self._break_end = self._loop.call_later(seconds, self._end_break)

    def _end_break(self) -> None:
        self._break_end = None
        if not self.closed:
            with contextlib.suppress(OSError):
                self._serial.break_condition = False

    def subscribe(
        self, key: object, output: Callable[[bytes], None], gone: Callable[[str], None]
    ) -> None:
        self._subscribers[key] = _Subscriber(output, gone)
        if self._backlog:
            backlog, self._backlog = bytes(self._backlog), bytearray()
            output(backlog)

    def unsubscribe(self, key: object) -> None:
        self._subscribers.pop(key, None)

    def write(self, data: bytes, drained: Callable[[], None]) -> bool:
        """Queue ``data`` for the port; False means call ``drained`` later, then send more."""
        if self.closed:
            return True
        self._pending += data
        self._flush()
        if len(self._pending) <= WRITE_HIGH_WATER:
            return True
        self._drained.append(drained)
        return False

    def _flush(self) -> None:
        if self.closed:
            return
        try:
            n = os.write(self.fd, self._pending)
            del self._pending[:n]
        except BlockingIOError:
            pass
        except OSError as exc:
            self._lost(f"writing failed: {os.strerror(exc.errno or 0)}")
            return
        if self._pending:
            self._loop.add_writer(self.fd, self._flush)
            return
        self._loop.remove_writer(self.fd)
        callbacks, self._drained = self._drained, []
        for callback in callbacks:
            callback()

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return
            # EIO: a USB adapter unplugged, or the master side of a pty closed.
            self._lost(f"the port went away ({os.strerror(exc.errno or 0)})")
            return
        if not data:
            self._lost("the port went away (end of file)")
            return
        if not self._subscribers:
            self._backlog += data
            del self._backlog[:-BACKLOG]
        for sub in list(self._subscribers.values()):
            sub.output(data)

    def _lost(self, reason: str) -> None:
        log.warning("serial port lost: %s", reason, extra={"port": self.path})
        subscribers = list(self._subscribers.values())
        self.close()
        for sub in subscribers:
            sub.gone(f"serial port {self.path}: {reason}")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._loop.remove_reader(self.fd)
        self._loop.remove_writer(self.fd)
        if self._break_end is not None:
            self._break_end.cancel()
        self._subscribers.clear()
        callbacks, self._drained = self._drained, []
        for callback in callbacks:
            callback()
        with contextlib.suppress(OSError):
            self._serial.close()


class SerialConsoles:
    """The agent's ports: claims (:class:`PortTable`) plus the lines open right now."""

    def __init__(self, ports: Iterable[str] = ()) -> None:
        self.table = PortTable(ports)
        self._lines: dict[str, SerialLine] = {}

    @property
    def ports(self) -> list[str]:
        return list(self.table.ports)

    def open(self, request: ConsoleRequest, holder: Holder) -> SerialLine:
        """:meth:`claim` then :meth:`attach` (the console awaits its audit in between)."""
        self.claim(request, holder)
        return self.attach(request, holder)

    def claim(self, request: ConsoleRequest, holder: Holder) -> None:
        """Take a writer's or a viewer's place on the port (nothing is opened yet).

        ConsoleRefused with a reason for the user (port busy, unknown port).
        """
        self.table.claim(request.port, request.mode, holder)

    def rate(self, request: ConsoleRequest) -> int:
        """The baud rate :meth:`attach` will leave the line at for ``request``."""
        line = self._lines.get(request.port)
        if request.mode is Mode.READ_ONLY and line is not None and not line.closed:
            return line.baud
        return request.baud

    def attach(self, request: ConsoleRequest, holder: Holder) -> SerialLine:
        """Open (or join) the claimed port; on failure release the claim, ConsoleRefused.

        A writer sets the line's baud rate; a viewer takes the rate it is at.
        """
        line = self._lines.get(request.port)
        try:
            if line is None or line.closed:
                line = SerialLine(request.port, request.baud)
                self._lines[request.port] = line
            elif request.mode is Mode.READ_WRITE and line.baud != request.baud:
                line.set_baud(request.baud)
        except (OSError, ValueError) as exc:  # pyserial's SerialException is an OSError
            self.release(request.port, holder)
            log.warning("serial port open failed: %s", exc, extra={"port": request.port})
            raise ConsoleRefused(
                f"could not open serial port {request.port}: {_why(exc)}"
            ) from None
        return line

    def release(self, port: str, holder: Holder) -> None:
        """Drop ``holder``'s claim; the port closes when nobody holds it."""
        self.table.release(port, holder)
        if self.table.holders(port) == 0:
            line = self._lines.pop(port, None)
            if line is not None:
                line.close()


def _why(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if code == errno.EWOULDBLOCK:  # pyserial's flock(LOCK_EX | LOCK_NB) failed
        return "another program on the device holds it"
    if isinstance(code, int) and code:
        return os.strerror(code)
    return str(exc)[:120] or type(exc).__name__
