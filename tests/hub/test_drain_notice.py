"""hub/drain_notice.py: the drain's lines, and notices sent over real websockets."""

from __future__ import annotations

import asyncio
import time

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from hub.drain_notice import (
    SESSION_CUT,
    Notices,
    restart_refusal,
    seconds_left,
    session_notice,
)


def test_seconds_left_rounds_up_and_is_never_zero() -> None:
    assert seconds_left(100.0, 70.0) == 30
    assert seconds_left(100.0, 70.2) == 30
    assert seconds_left(100.0, 99.9) == 1
    assert seconds_left(100.0, 120.0) == 1  # past the deadline: "in 1 s", never 0 or less


def test_lines() -> None:
    assert session_notice(30) == (
        "hub restarting: this session ends in 30 s; reconnect with the same command"
    )
    assert restart_refusal(12) == "hub is restarting, try again in 12 s"
    assert SESSION_CUT == "hub restarting: this session ends now; reconnect with the same command"


async def test_announce_reaches_every_open_relay_and_skips_closed_ones() -> None:
    notices = Notices()
    joined: list[ServerConnection] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        joined.append(ws)
        notices.add(ws)
        await done.wait()
        notices.discard(ws)

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with (
            connect(f"ws://127.0.0.1:{port}", compression=None) as one,
            connect(f"ws://127.0.0.1:{port}", compression=None) as two,
            connect(f"ws://127.0.0.1:{port}", compression=None) as gone,
        ):
            for _ in range(100):
                if len(joined) == 3:
                    break
                await asyncio.sleep(0.01)
            await gone.close()
            await asyncio.sleep(0.05)
            assert len(notices) == 3
            assert await notices.announce(session_notice(7)) == 2
            for client in (one, two):
                got = await asyncio.wait_for(client.recv(), 5)
                assert got == session_notice(7)  # a text message, one line
            at = time.monotonic() + 0.2
            assert await notices.announce_at(at, SESSION_CUT) == 2
            assert time.monotonic() >= at
            for client in (one, two):
                assert await asyncio.wait_for(client.recv(), 5) == SESSION_CUT
            done.set()
