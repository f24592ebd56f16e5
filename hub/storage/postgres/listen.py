"""The change feed from PostgreSQL: one LISTEN connection per Storage, into a ChangeFeed.

Every write that changes a topic runs ``pg_notify('remoteler_changes', 'topic:key')``
in its own transaction (:func:`hub.storage.postgres.db.notify`), so a change is
announced exactly when it commits, to every hub, this one included. When the
LISTEN connection breaks, NOTIFYs sent meanwhile are lost: the listener
reconnects with capped exponential backoff and full jitter, then calls
:meth:`ChangeFeed.gap`, which tells every subscriber to re-read every topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from psycopg import AsyncConnection

from hub.storage.api import TOPICS, Change
from hub.storage.feed import ChangeFeed
from hub.storage.postgres.db import CHANNEL
from hub.storage.postgres.errors import first_line

log = logging.getLogger("remoteler.hub.storage")

#: Reconnect backoff: first delay and cap, seconds (full jitter in between).
BACKOFF_FIRST = 0.2
BACKOFF_CAP = 10.0


def parse(payload: str) -> Change | None:
    """``topic:key`` as a Change; None for a payload that is not one of ours."""
    topic, sep, key = payload.partition(":")
    if not sep or topic not in TOPICS:
        return None
    for known in TOPICS:  # the Literal value itself, for the type checker
        if known == topic:
            return Change(known, key or "*")
    return None


Connect = Callable[[], Awaitable[AsyncConnection[object]]]


class Listener:
    def __init__(self, connect: Connect, feed: ChangeFeed, where: str) -> None:
        self._connect = connect
        self._feed = feed
        self._where = where
        self._task: asyncio.Task[None] | None = None
        self._conn: AsyncConnection[object] | None = None
        #: set while a LISTEN is in place (tests wait on it)
        self.listening = asyncio.Event()
        #: LISTEN connections lost and re-established (each one a gap)
        self.gaps = 0

    async def start(self) -> None:
        """LISTEN (raises if the first connection fails), then follow in a task."""
        conn = await self._listen()
        self._task = asyncio.create_task(self._run(conn), name="storage-listen")

    async def _listen(self) -> AsyncConnection[object]:
        conn = await self._connect()
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self.listening.set()
        return conn

    async def backend_pid(self) -> int | None:
        return self._conn.info.backend_pid if self._conn is not None else None

    async def _run(self, conn: AsyncConnection[object]) -> None:
        while True:
            try:
                async for note in conn.notifies():
                    change = parse(note.payload)
                    if change is not None:
                        self._feed.publish(change)
                reason = "closed"
            except Exception as exc:  # psycopg: the server went away, the socket broke
                reason = first_line(exc)
            self.listening.clear()
            with contextlib.suppress(Exception):
                await conn.close()
            log.warning(
                "storage: the change feed from %s broke (%s); reconnecting", self._where, reason
            )
            conn = await self._reconnect()
            self.gaps += 1
            self._feed.gap()  # what was sent while we were away is lost: re-read all
            log.info("storage: the change feed from %s is back", self._where)

    async def _reconnect(self) -> AsyncConnection[object]:
        delay = BACKOFF_FIRST
        while True:
            await asyncio.sleep(random.uniform(0, delay))
            try:
                return await self._listen()
            except Exception as exc:
                log.warning("storage: change feed reconnect failed: %s", first_line(exc))
                delay = min(BACKOFF_CAP, delay * 2)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
