"""A rogue agent on a real hub's tunnel endpoint: every kind of bad input ends its tunnel
with its own GOAWAY code and one log line, while another agent's tunnel keeps working.

Data beyond the granted window (FLOW_CONTROL) is tested on the sans-I/O core
(tests/wire/test_connection.py): on a live hub the audit reader consumes as fast
as a test can send, so the window never runs out. Slow ClientHellos are in
test_listener.py, missing or wrong certificates in test_server_hostile.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hubkit import Hub, running_hub
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from remoteler.protocol import TUNNEL_ALPN, TUNNEL_SUBPROTOCOL
from remoteler.wire.codes import ErrorCode
from remoteler.wire.frames import (
    DataFrame,
    GoAwayFrame,
    OpenFailFrame,
    OpenFrame,
    OpenOkFrame,
    PingFrame,
    PongFrame,
    WindowFrame,
    decode_frame,
    encode_frame,
)
from remoteler.wire.limits import Limits

LIMITS = Limits()


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path, audit=True) as h:  # agents may open "audit" channels
        yield h


async def dial(hub: Hub, creds: tuple[bytes, bytes]) -> ClientConnection:
    return await connect(
        hub.url("/v1/tunnel"),
        ssl=hub.tls(*creds, alpn=[TUNNEL_ALPN]),
        compression=None,
        subprotocols=[TUNNEL_SUBPROTOCOL],  # type: ignore[list-item]
        max_size=None,
        open_timeout=10,
        close_timeout=2,
    )


async def goaway_code(ws: ClientConnection) -> int:
    """Read until the hub's GOAWAY and return its code (then the websocket closes)."""
    async with asyncio.timeout(10):
        while True:
            frame = decode_frame(await ws.recv(), LIMITS)  # type: ignore[arg-type]
            if isinstance(frame, GoAwayFrame):
                with pytest.raises(ConnectionClosed):
                    while True:
                        await ws.recv()
                return frame.code


async def open_audit_channel(ws: ClientConnection) -> int:
    await ws.send(encode_frame(OpenFrame(1, "audit", {}, 1 << 20)))
    async with asyncio.timeout(10):
        while True:
            frame = decode_frame(await ws.recv(), LIMITS)  # type: ignore[arg-type]
            if isinstance(frame, OpenOkFrame):
                return frame.initial_window


async def still_works(ws: ClientConnection, seq: int) -> None:
    await ws.send(encode_frame(PingFrame(seq, None)))
    async with asyncio.timeout(10):
        while True:
            frame = decode_frame(await ws.recv(), LIMITS)  # type: ignore[arg-type]
            if isinstance(frame, PongFrame) and frame.seq == seq:
                return


def packb(items: list[Any]) -> bytes:
    out: bytes = msgpack.packb(items, use_bin_type=True)
    return out


async def send_all(ws: ClientConnection, messages: list[bytes | str]) -> None:
    for message in messages:
        await ws.send(message)


async def overflow_window(ws: ClientConnection) -> None:
    await open_audit_channel(ws)
    await ws.send(encode_frame(WindowFrame(1, 0xFFFFFFFF)))


async def data_after_refusal(ws: ClientConnection) -> None:
    await ws.send(encode_frame(OpenFrame(1, "no-such-kind", {}, 1024)))
    async with asyncio.timeout(10):
        while not isinstance(decode_frame(await ws.recv(), LIMITS), OpenFailFrame):  # type: ignore[arg-type]
            pass
    await ws.send(encode_frame(DataFrame(1, b"late")))


async def too_many_channels(ws: ClientConnection) -> None:
    # Opened in one burst, accepted ("audit") and never closed: number 1025 is too many.
    await send_all(
        ws,
        [
            encode_frame(OpenFrame(2 * i + 1, "audit", {}, 1024))
            for i in range(LIMITS.max_channels + 1)
        ],
    )


Attack = Callable[[ClientConnection], Any]

CASES: list[tuple[str, Attack, ErrorCode]] = [
    ("malformed msgpack", lambda ws: ws.send(b"\xc1\xc1"), ErrorCode.MALFORMED_FRAME),
    ("wrong types", lambda ws: ws.send(packb([4, "one", b"x"])), ErrorCode.MALFORMED_FRAME),
    ("unknown frame type", lambda ws: ws.send(packb([99, 1])), ErrorCode.UNKNOWN_FRAME_TYPE),
    (
        "oversized frame",
        lambda ws: ws.send(encode_frame(DataFrame(1, b"x" * LIMITS.max_frame_bytes))),
        ErrorCode.FRAME_TOO_LARGE,
    ),
    ("too many channels", too_many_channels, ErrorCode.TOO_MANY_CHANNELS),
    (
        "data on an unknown channel",
        lambda ws: ws.send(encode_frame(DataFrame(77, b"x"))),
        ErrorCode.UNKNOWN_CHANNEL,
    ),
    ("data on a refused channel", data_after_refusal, ErrorCode.UNKNOWN_CHANNEL),
    ("window overflow", overflow_window, ErrorCode.FLOW_CONTROL),
    ("text message", lambda ws: ws.send("hello"), ErrorCode.TEXT_MESSAGE),
]


@pytest.mark.parametrize(("attack", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_bad_input_ends_only_that_tunnel(
    hub: Hub, attack: Attack, code: ErrorCode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    good = await dial(hub, await hub.node_creds("good"))
    rogue = await dial(hub, await hub.node_creds("rogue"))
    try:
        await still_works(good, 1)
        await attack(rogue)
        assert await goaway_code(rogue) == code
        await still_works(good, 2)
        lines = [r for r in caplog.records if f"code={code.name}" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    finally:
        await good.close()
        await rogue.close()
