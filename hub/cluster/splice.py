"""Copy bytes both ways between two tunnel channels, with each side's flow control.

Used by the hub that holds a node's tunnel to join a peer hub's ``relay`` channel to
the agent's ``ssh`` channel: it reads only as fast as the other side drains, so the
windows of both channels bound what is buffered here and a slow user slows the
device (end-to-end flow control across the peer hop).

When one side closes, what it sent before closing is still delivered to the other
(up to :data:`LINGER` seconds for a slow reader), with its EOF; only the copy
towards the closed side stops at once, since nothing can reach it any more.
"""

from __future__ import annotations

import asyncio
import contextlib

from remoteler.wire.aio import Channel
from remoteler.wire.exceptions import ChannelClosedError

CHUNK = 256 * 1024
#: Seconds the data a closed side sent last may take to reach the other side.
LINGER = 30.0


async def pump(src: Channel, dst: Channel, moved: list[int], index: int) -> None:
    """Copy ``src`` to ``dst`` until EOF (or close) and pass the EOF on, counting the
    bytes in ``moved[index]``."""
    try:
        while data := await src.read(CHUNK):
            moved[index] += len(data)
            dst.write(data)
            await dst.drain()
        dst.write_eof()
    except ChannelClosedError:
        pass


async def splice(a: Channel, b: Channel, linger: float = LINGER) -> tuple[int, int]:
    """Copy both ways until both streams ended or one side closed (its last bytes
    still delivered, within ``linger``); close both. Returns (bytes a->b, bytes b->a)."""
    moved = [0, 0]
    ab = asyncio.ensure_future(pump(a, b, moved, 0))
    ba = asyncio.ensure_future(pump(b, a, moved, 1))
    a_closed = asyncio.ensure_future(a.wait_closed())
    b_closed = asyncio.ensure_future(b.wait_closed())
    tasks = (ab, ba, a_closed, b_closed)
    try:
        while not (ab.done() and ba.done()):
            await asyncio.wait(
                [t for t in tasks if not t.done()], return_when=asyncio.FIRST_COMPLETED
            )
            if a_closed.done() or b_closed.done():
                if a_closed.done():
                    ba.cancel()  # nothing reaches a closed channel
                if b_closed.done():
                    ab.cancel()
                left = [t for t in (ab, ba) if not t.done()]
                if left:  # the closed side's last bytes, to the other
                    await asyncio.wait(left, timeout=linger)
                break
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(*tasks, return_exceptions=True)
        a.close()
        b.close()
    return moved[0], moved[1]
