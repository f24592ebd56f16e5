"""``tsh console``: a device's serial port over the end-to-end SSH connection.

The local terminal goes raw (as ``cu``/``picocom``: every key, Ctrl-C included,
goes to the device) and comes back as it was on exit. Escapes after a newline
(:mod:`tsh.escapes`) quit, send a break or change the baud rate. With pipes
instead of a terminal it works the same, which is how the tests drive it;
end of input stops sending, not the console (``~.`` or a signal ends it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import tty
from typing import Any

from remoteler.console import (
    CONSOLE_SUBSYSTEM,
    CONTROL_SUBSYSTEM,
    DEFAULT_BREAK_MS,
    ENV_BAUD,
    ENV_MODE,
    ENV_PORT,
    Mode,
    parse_baud,
)
from tsh.escapes import HELP, Break, EscapeParser, Help, Quit, Send, SetBaud
from tsh.ssh import stdin_chunks, write_all

#: exit status when the user quits with ``~.`` or a signal
QUIT_STATUS = 0


def _note(text: str) -> bytes:
    """A line of ours on the user's terminal (CR LF: it may be raw)."""
    return f"\r\n[tsh: {text}]\r\n".encode()


async def _pump_out(stream: Any, fd: int) -> None:
    while data := await stream.read(65536):
        await write_all(fd, data)


async def _set_baud(conn: Any, rate: str) -> bytes:
    """Ask the device for ``rate`` on this connection's port; the line to show the user."""
    try:
        baud = parse_baud(rate)
    except ValueError as exc:
        return _note(str(exc))
    result = await conn.run(subsystem=CONTROL_SUBSYSTEM, env={ENV_BAUD: str(baud)}, encoding=None)
    if result.exit_status == 0:
        return _note(f"baud rate now {baud}")
    reason = bytes(result.stderr or b"").decode("utf-8", "replace").strip()
    return _note(reason or f"the device did not change the baud rate (status {result.exit_status})")


async def _pump_in(conn: Any, process: Any, read_only: bool, quit: asyncio.Event) -> None:
    parser = EscapeParser()
    err = sys.stderr.fileno()
    async for chunk in stdin_chunks():
        for action in parser.feed(chunk):
            if isinstance(action, Send):
                if not read_only:
                    process.stdin.write(action.data)
                    await process.stdin.drain()
            elif isinstance(action, Quit):
                quit.set()
                return
            elif isinstance(action, Break):
                if read_only:
                    await write_all(err, _note("read-only: no break sent"))
                else:
                    process.channel.send_break(DEFAULT_BREAK_MS)
                    await write_all(err, _note("break sent"))
            elif isinstance(action, SetBaud):
                await write_all(err, await _set_baud(conn, action.rate))
            elif isinstance(action, Help):
                await write_all(err, b"\r\n" + HELP.encode())


async def run_console(conn: Any, port: str | None, baud: int, read_only: bool) -> int:
    """Hold the console until ``~.``, a signal or the device ends it; return tsh's exit code."""
    env = {ENV_BAUD: str(baud), ENV_MODE: str(Mode.READ_ONLY if read_only else Mode.READ_WRITE)}
    if port:
        env[ENV_PORT] = port
    process = await conn.create_process(subsystem=CONSOLE_SUBSYSTEM, env=env, encoding=None)
    loop = asyncio.get_running_loop()
    quit = asyncio.Event()
    stdin_fd = sys.stdin.fileno()
    saved = None
    if os.isatty(stdin_fd):
        saved = termios.tcgetattr(stdin_fd)
        tty.setraw(stdin_fd)
        await write_all(sys.stderr.fileno(), b"[tsh: ~. to quit, ~? for help]\r\n")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, quit.set)
    output: asyncio.Future[Any] = asyncio.ensure_future(
        asyncio.gather(
            _pump_out(process.stdout, sys.stdout.fileno()),
            _pump_out(process.stderr, sys.stderr.fileno()),
        )
    )
    typing = asyncio.ensure_future(_pump_in(conn, process, read_only, quit))
    quitting: asyncio.Future[Any] = asyncio.ensure_future(quit.wait())
    try:
        await asyncio.wait([output, quitting], return_when=asyncio.FIRST_COMPLETED)
        if quit.is_set():
            process.close()
            return QUIT_STATUS
        await process.wait(check=False)
    finally:
        for task in (typing, quitting, output):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        if saved is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)
    status = process.exit_status
    if status is None or status < 0:
        print("tsh: the console closed without an exit status", file=sys.stderr)
        return 255
    return int(status)
