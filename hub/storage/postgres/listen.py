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

#: Seconds without a notice after which the LISTEN connection is pinged, and how long
#: the ping may take before the connection counts as dead.
HEARTBEAT = 15.0
PING_TIMEOUT = 5.0
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
        self.heartbeat = HEARTBEAT
        self.ping_timeout = PING_TIMEOUT

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
            reason = await self._follow(conn)
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

    async def _follow(self, conn: AsyncConnection[object]) -> str:
        """Publish what arrives until the connection fails; why it did. A quiet connection
        is pinged every :attr:`heartbeat` seconds: a silent dead link (a NAT that forgot
        the mapping) is found within ``heartbeat + ping_timeout``, not never."""
        while True:
            try:
                async for note in conn.notifies(timeout=self.heartbeat):
                    change = parse(note.payload)
                    if change is not None:
                        self._feed.publish(change)
                async with asyncio.timeout(self.ping_timeout):
                    await conn.execute("SELECT 1")
            except TimeoutError:
                return f"no answer to a ping in {self.ping_timeout:g} s"
            except Exception as exc:  # psycopg: the server went away, the socket broke
                return first_line(exc)

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
