"""Connection-level noise does not flood the hub's log: a flood of aborted connections
is one summary line, not one line each (5,058 lines in one test before)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

import pytest
from hubkit import Hub, running_hub
from test_listener import hello, ping, wait_for

from hub.net.listener import ListenerLimits


async def flood(hub: Hub, closed_early: int, not_tls: int, tls_reset: int) -> None:
    """Connections that close before their ClientHello, send HTTP, or send a ClientHello
    and reset; from 127.0.0.2."""
    loop = asyncio.get_running_loop()

    async def one(data: bytes, reset: bool) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind(("127.0.0.2", 0))
            await loop.sock_connect(sock, ("127.0.0.1", hub.port))
            if data:
                await loop.sock_sendall(sock, data)
                await asyncio.sleep(0.2)  # let the hub read it
            if reset:  # SO_LINGER 0: an RST, as a client that gives up hard
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        finally:
            sock.close()

    jobs = [one(b"", False) for _ in range(closed_early)]
    jobs += [one(b"GET / HTTP/1.1\r\n\r\n", False) for _ in range(not_tls)]
    jobs += [one(hello(None), True) for _ in range(tls_reset)]
    for i in range(0, len(jobs), 100):
        await asyncio.gather(*jobs[i : i + 100])


async def test_a_flood_of_aborted_connections_is_one_summary_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    limits = ListenerLimits(drop_summary_interval=1.0)
    async with running_hub(tmp_path, limits) as hub:
        listener = hub.server.listener
        assert listener is not None
        await ping(hub)
        caplog.clear()
        await flood(hub, closed_early=500, not_tls=50, tls_reset=20)
        await wait_for(lambda: listener.queued == 0 and sum(listener.drops.totals.values()) >= 570)
        await wait_for(lambda: any("connections dropped" in r.message for r in caplog.records))
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) <= 2, "\n".join(lines[:20])
        summary = next(line for line in lines if "connections dropped" in line)
        assert "before TLS (closed early 500, not TLS 50)" in summary, summary
        # Those with a ClientHello were reset in the user lane's queue or its handshake.
        assert listener.drops.totals["queue"] + listener.drops.totals["tls"] == 20
        assert "TLS handshake failures (reset by peer" in summary, summary
        assert "most from 127.0.0.2 (570)" in summary, summary
        with contextlib.suppress(AssertionError):  # a second interval stays silent
            await wait_for(lambda: len(caplog.records) > len(lines), 1.5)
        assert len(caplog.records) == len(lines)


async def test_websocket_aborts_are_summarised_under_the_listeners_source_key() -> None:
    """hub/net/wsguard.py reports the peer's host; the summary keys every stage by
    hub.net.admission.source_key, so an IPv6 /64 cut at the websocket and refused at
    accept is one source, not one per address."""
    import ssl

    from hub.net.listener import Listener

    async def handler(_: object) -> None:
        return None

    async def process(_: object, __: object) -> None:
        return None

    listener = Listener(
        handler,  # type: ignore[arg-type]
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        process_request=process,  # type: ignore[arg-type]
        subprotocols=[],
        max_size=1 << 16,
        limits=ListenerLimits(drop_summary_interval=0.0),
    )
    now = asyncio.get_running_loop().time()
    listener.drops.add("refused", "per-address cap", now, "2001:db8::/64")
    listener._ws_aborted("unsent cap", "2001:db8::7")
    listener._ws_aborted("stalled send", "2001:db8::8")
    line = listener.drops.summary(now + 1.0)
    assert line is not None and "most from 2001:db8::/64 (3)" in line, line
