"""One small asyncio helper the agent's loops share: wait for the first of several
things (a timer, a stop event, a change), cancelling the others."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

__all__ = ["first"]


async def first(*aws: Awaitable[object]) -> None:
    """Wait until the first of ``aws`` is done, cancel the rest (``first(sleep(s),
    stop.wait())`` sleeps ``s`` seconds, or less if ``stop`` is set meanwhile)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
