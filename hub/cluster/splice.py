"""Copy bytes both ways between two tunnel channels, with each side's flow control.

Used by the hub that holds a node's tunnel to join a peer hub's ``relay`` channel to
the agent's ``ssh`` channel: it reads only as fast as the other side drains, so the
windows of both channels bound what is buffered here and a slow user slows the
device (end-to-end flow control across the peer hop).
"""

from __future__ import annotations

import asyncio
import contextlib

from remoteler.wire.aio import Channel
from remoteler.wire.exceptions import ChannelClosedError

CHUNK = 256 * 1024


async def pump(src: Channel, dst: Channel) -> int:
    """Copy ``src`` to ``dst`` until EOF; pass the EOF on; the byte count."""
    moved = 0
    try:
        while data := await src.read(CHUNK):
            moved += len(data)
            dst.write(data)
            await dst.drain()
        dst.write_eof()
    except ChannelClosedError:
        pass
    return moved


async def splice(a: Channel, b: Channel) -> tuple[int, int]:
    """Run both directions until both ended (EOF each way) or one side closed;
    close both. Returns (bytes a->b, bytes b->a)."""
    ab = asyncio.ensure_future(pump(a, b))
    ba = asyncio.ensure_future(pump(b, a))
    closed = asyncio.ensure_future(_either_closed(a, b))
    both = asyncio.ensure_future(_both(ab, ba))
    try:
        await asyncio.wait([closed, both], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (ab, ba, closed, both):
            task.cancel()
        a.close()
        b.close()
    out = [t.result() if t.done() and not t.cancelled() else 0 for t in (ab, ba)]
    with contextlib.suppress(BaseException):
        await asyncio.gather(ab, ba, closed, both, return_exceptions=True)
    return out[0], out[1]


async def _both(ab: asyncio.Future[int], ba: asyncio.Future[int]) -> None:
    await asyncio.gather(ab, ba)


async def _either_closed(a: Channel, b: Channel) -> None:
    waits = {asyncio.ensure_future(a.wait_closed()), asyncio.ensure_future(b.wait_closed())}
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
