"""Bound what waits below a tunnel's frame scheduler: kernel and transport send buffers.

The scheduler (:mod:`remoteler.wire.sched`) lets a keystroke overtake bulk data
only while that data is still in it. Once written, bytes wait in asyncio's TLS
buffer, the plain transport's buffer under it and the kernel's send queue; on a
10 KiB/s link the kernel alone held 237-500 KB (tens of seconds) behind a bulk
transfer. Here:

* ``TCP_NOTSENT_LOWAT`` (Linux, option 25; RFC-less, see ``tcp(7)``) makes the
  socket writable, and ``send()`` accept more, only while fewer than that many
  bytes are queued and not yet sent, so the backlog stays in the scheduler;
* the transports' write-buffer high-water marks follow the link's measured
  budget (:class:`remoteler.wire.pace.LinkPacer`): about 0.1 s of the link each,
  back to asyncio's and websockets' defaults when the link keeps up.

Nothing here fails a tunnel: a socket without the option (not TCP, not Linux)
keeps the kernel's default, and a transport without buffer limits is left alone.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

__all__ = ["NOTSENT_LOWAT", "TCP_NOTSENT_LOWAT", "apply_budget", "notsent_lowat"]

#: Linux's option number, for Pythons built without ``socket.TCP_NOTSENT_LOWAT``.
TCP_NOTSENT_LOWAT: int = getattr(socket, "TCP_NOTSENT_LOWAT", 25)
#: Unsent bytes the kernel holds per tunnel socket while the link keeps up (the
#: figure Apple and Cloudflare use for HTTP/2 prioritisation); smaller on a slow link.
NOTSENT_LOWAT = 16 * 1024
#: The least any of these buffers is set to, bytes.
MIN_BUFFER = 1024
#: websockets' default write limit (its TLS transport's high-water mark), bytes.
WS_WRITE_LIMIT = 32 * 1024
#: asyncio's default high-water mark of a plain socket transport, bytes.
TRANSPORT_WRITE_LIMIT = 64 * 1024


def notsent_lowat(sock: Any) -> int | None:
    """The socket's ``TCP_NOTSENT_LOWAT`` (0: none), or None if it has no such option."""
    try:
        return int(sock.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT))
    except (OSError, AttributeError):
        return None


def apply_budget(transport: Any, budget: int | None) -> None:
    """Size ``transport``'s buffers for a link draining ``budget`` bytes per 0.1 s.

    ``budget`` None: the link keeps up (defaults, kernel capped at
    :data:`NOTSENT_LOWAT`). ``transport`` is a websocket's (TLS or plain) asyncio
    transport; anything else is ignored.
    """
    if transport is None:
        return
    small = None if budget is None else max(MIN_BUFFER, budget)
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        lowat = NOTSENT_LOWAT if small is None else min(small, NOTSENT_LOWAT)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, lowat)
    # The TLS transport, then the plain one below it (a CPython internal: 3.11's
    # sslproto keeps it as ``_ssl_protocol._transport``; absent elsewhere, skipped).
    raw = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    layers = [(transport, WS_WRITE_LIMIT if raw is not None else TRANSPORT_WRITE_LIMIT)]
    if raw is not None:
        layers.append((raw, TRANSPORT_WRITE_LIMIT))
    for layer, default in layers:
        high = default if small is None else min(small, default)
        with contextlib.suppress(AttributeError, ValueError, RuntimeError):
            layer.set_write_buffer_limits(high=high, low=high // 4)
