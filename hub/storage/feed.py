"""The in-process side of the change feed: fan one stream of changes out to subscribers.

Both engines publish here: SQLite for its own writes (and for writes it detects
by ``data_version``), PostgreSQL for every ``NOTIFY`` it receives. A subscriber
that falls :data:`QUEUE_CAP` changes behind is not allowed to grow memory: its
queue is emptied and it gets ``Change(topic, "*")`` for every topic instead (re-read
everything), which is also what every subscriber gets after a gap in the feed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hub.storage.api import TOPICS, Change

#: Changes one subscriber may have waiting before it is told to re-read everything.
QUEUE_CAP = 1024


class ChangeFeed:
    def __init__(self, cap: int = QUEUE_CAP) -> None:
        self._cap = cap
        self._subscribers: set[asyncio.Queue[Change | None]] = set()

    def __len__(self) -> int:
        return len(self._subscribers)

    def publish(self, change: Change) -> None:
        for queue in self._subscribers:
            if queue.qsize() >= self._cap:
                _reset(queue)
            else:
                queue.put_nowait(change)

    def gap(self) -> None:
        """Subscribers may have missed changes: tell each to re-read every topic."""
        for queue in self._subscribers:
            _reset(queue)

    def close(self) -> None:
        for queue in self._subscribers:
            queue.put_nowait(None)

    def subscribe(self) -> AsyncIterator[Change]:
        """A subscription that receives every change published from this call on (not
        only from its first iteration: a caller may subscribe, write, then read)."""
        queue: asyncio.Queue[Change | None] = asyncio.Queue()
        self._subscribers.add(queue)
        return self._follow(queue)

    async def _follow(self, queue: asyncio.Queue[Change | None]) -> AsyncIterator[Change]:
        try:
            while (change := await queue.get()) is not None:
                yield change
        finally:
            self._subscribers.discard(queue)


def _reset(queue: asyncio.Queue[Change | None]) -> None:
    while not queue.empty():
        if queue.get_nowait() is None:  # closing: keep the end marker
            queue.put_nowait(None)
            return
    for topic in TOPICS:
        queue.put_nowait(Change(topic, "*"))
