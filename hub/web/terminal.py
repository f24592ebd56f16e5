"""The browser's terminal: a websocket from the page, an SSH session from the hub.

The browser cannot speak SSH, so the hub does, as the user, with the web session's
own certificate: it dials its own listener exactly as ``tsh ssh`` would (the same
access checks, session caps, locks, recording by the device and audit), and copies
bytes between the page's websocket and the SSH channel. Web sessions are therefore
decrypted at the hub, as Teleport's are (docs/web.md).

The page's websocket: binary messages are terminal bytes both ways; text messages
are JSON controls, ``{"type": "resize", "cols": C, "rows": R}`` from the page and
``{"type": "exit" | "error", "message": ..., "status": N}`` to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from remoteler.console import CONSOLE_SUBSYSTEM, ENV_BAUD, ENV_MODE, ENV_PORT, Mode
from remoteler.errors import RemotelerError
from remoteler.identity import UserIdentity

log = logging.getLogger("remoteler.hub.web.terminal")

#: Largest message the page may send (a paste is split by the browser side).
MAX_MESSAGE = 64 * 1024
MAX_COLS, MAX_ROWS = 1000, 500
#: Seconds the SSH session has to open before the page is told it failed.
OPEN_TIMEOUT = 30.0


def clamp_size(cols: Any, rows: Any) -> tuple[int, int]:
    def one(v: Any, top: int, default: int) -> int:
        return min(top, max(1, v)) if isinstance(v, int) and not isinstance(v, bool) else default

    return one(cols, MAX_COLS, 80), one(rows, MAX_ROWS, 24)


def exit_message(status: int | None, signal_name: str | None, reason: str) -> str:
    """What the page prints when the session ends: ``tsh ssh``'s words."""
    if status is not None and status >= 0:
        return f"session ended (exit status {status})"
    if signal_name:
        return f"remote command killed by signal {signal_name}"
    return reason or "connection to the node closed without an exit status"


async def _send_control(ws: web.WebSocketResponse, **msg: Any) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(json.dumps(msg))


async def run_terminal(
    ws: web.WebSocketResponse,
    hub_addr: str,
    identity: UserIdentity,
    login: str,
    node: str,
    size: tuple[int, int],
    on_end: Callable[[str], None] | None = None,
    serial: tuple[str, int] | None = None,
) -> str:
    """Serve one terminal until either side ends; return how it ended (for the audit).

    ``serial``: (port, baud) for the node's serial console instead of a shell, as
    ``tsh console`` opens it (the device checks the role's ``serial_console``).
    """
    from tsh.ssh import open_ssh  # the hub dials itself as tsh does

    notices: list[str] = []
    try:
        async with asyncio.timeout(OPEN_TIMEOUT):
            conn = await open_ssh(
                hub_addr, identity, login, node, resume=False, on_text=notices.append
            )
    except TimeoutError:
        message = f"connection to {node!r} timed out; try again"
        await _send_control(ws, type="error", message=message)
        return message
    except RemotelerError as exc:
        await _send_control(ws, type="error", message=exc.message)
        return exc.message
    try:
        if serial is not None:
            env = {ENV_BAUD: str(serial[1]), ENV_MODE: str(Mode.READ_WRITE), ENV_PORT: serial[0]}
            process = await conn.create_process(subsystem=CONSOLE_SUBSYSTEM, env=env, encoding=None)
        else:
            process = await conn.create_process(
                None, encoding=None, term_type="xterm-256color", term_size=size
            )
    except Exception as exc:  # the device refused the shell (asyncssh.ChannelOpenError)
        conn.close()
        message = f"node {node!r} refused the session: {getattr(exc, 'reason', exc)}"
        await _send_control(ws, type="error", message=message)
        return message

    async def copy(stream: Any) -> None:
        while data := await stream.read(65536):
            await ws.send_bytes(data)

    async def to_page() -> None:  # stderr too: the device's refusals and lock messages
        await asyncio.gather(copy(process.stdout), copy(process.stderr))

    async def from_page() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                process.stdin.write(msg.data)
                await process.stdin.drain()
            elif msg.type == WSMsgType.TEXT:
                try:
                    control = json.loads(msg.data)
                except ValueError:
                    continue
                if serial is None and isinstance(control, dict) and control.get("type") == "resize":
                    process.change_terminal_size(
                        *clamp_size(control.get("cols"), control.get("rows"))
                    )
            else:
                break

    out_task = asyncio.ensure_future(to_page())
    in_task = asyncio.ensure_future(from_page())
    try:
        done, _ = await asyncio.wait({out_task, in_task}, return_when=asyncio.FIRST_COMPLETED)
        if in_task in done:  # the page went: end the remote session as a closed ssh would
            with contextlib.suppress(Exception):
                process.send_signal(signal.SIGHUP.name.removeprefix("SIG"))
            conn.close()
            return "the browser closed the terminal"
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process.wait(check=False), 5.0)
        pipe = conn.get_extra_info("remoteler_pipe")
        reason = getattr(pipe, "close_reason", "") if pipe is not None else ""
        exit_signal = process.exit_signal[0] if process.exit_signal else None
        message = exit_message(process.exit_status, exit_signal, reason)
        status = process.exit_status if process.exit_status is not None else None
        await _send_control(ws, type="exit", status=status, message=message)
        return message
    finally:
        for task in (out_task, in_task):
            task.cancel()
        await asyncio.gather(out_task, in_task, return_exceptions=True)
        conn.close()
        if on_end is not None:
            on_end("")
