"""Tell every agent on this hub the cluster's hub list (docs/wire-protocol.md, "The hubs channel").

Each second, and at once after :meth:`HubListPusher.poke`, every live tunnel
whose last pushed list differs from the current one gets it on a ``hubs``
channel, as :mod:`hub.auth.locks` pushes the lock set: the body, EOF, and the
agent's ``ok``. At most :data:`MAX_PUSHES` are in flight; a push that fails is
tried again after :data:`PUSH_RETRY` seconds. An agent older than the channel
refuses its kind: that tunnel is left alone until it reconnects. Closed
tunnels are forgotten with them (a weak map).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from hub.api.tunnels import LiveNode
from remoteler.hublist import HubList
from remoteler.protocol import HUBS_KIND
from remoteler.wire.aio import Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.exceptions import ChannelClosedError, ChannelOpenError, TunnelClosed

__all__ = ["HubListPusher"]

log = logging.getLogger("remoteler.hub.api.hublist")

#: Seconds between two sweeps of the tunnels.
POLL_INTERVAL = 1.0
#: Seconds before a failed push is tried again.
PUSH_RETRY = 10.0
#: Seconds a push may take to open, and then to be answered.
PUSH_TIMEOUT = 10.0
#: Pushes in flight at once (a new hub reaches a large fleet in waves).
MAX_PUSHES = 64
#: What the "digest pushed" of a tunnel whose agent refused the kind is: never equal
#: to a real digest, so :meth:`HubListPusher.push_due` skips it explicitly.
REFUSED = "refused"


class HubListPusher:
    def __init__(
        self,
        live: Callable[[], Sequence[LiveNode]],
        current: Callable[[], HubList | None],
        *,
        generation: Callable[[], int] | None = None,
        interval: float = POLL_INTERVAL,
        retry: float = PUSH_RETRY,
        timeout: float = PUSH_TIMEOUT,
        max_pushes: int = MAX_PUSHES,
    ) -> None:
        """``live``: the tunnels up now (``TunnelRegistry.live``); ``current``: the list
        to push (None: none yet); ``generation`` (``TunnelRegistry.generation``), if
        given, lets a sweep that would find every tunnel up to date be skipped."""
        self.live = live
        self.current = current
        self.generation = generation
        self.interval = interval
        self.retry = retry
        self.timeout = timeout
        #: tunnel -> (digest pushed, "" while failing, or REFUSED; time of the last try)
        self._pushed: weakref.WeakKeyDictionary[Tunnel, tuple[str, float]] = (
            weakref.WeakKeyDictionary()
        )
        self._pushing: weakref.WeakSet[Tunnel] = weakref.WeakSet()
        self._tasks: set[asyncio.Future[None]] = set()
        self._slots = asyncio.Semaphore(max_pushes)
        self._poked = asyncio.Event()
        #: (digest, generation) of the last sweep that found nothing to do
        self._clean: tuple[str, int] | None = None
        self._closed = False

    def poke(self) -> None:
        """The list changed (a hub joined or left): sweep now, not within a second."""
        self._poked.set()

    def pushed(self, tunnel: Tunnel) -> str | None:
        """The digest last taken by ``tunnel``'s agent ("" while failing, ``REFUSED``)."""
        entry = self._pushed.get(tunnel)
        return None if entry is None else entry[0]

    def push_due(self) -> None:
        """Start a push to every live tunnel that lacks the current list."""
        hubs = self.current()
        if hubs is None or self._closed:
            return
        digest = hubs.digest()
        key = (digest, self.generation()) if self.generation is not None else None
        if key is not None and key == self._clean:
            return
        now = time.monotonic()
        settled = True
        for node in self.live():
            tunnel = node.tunnel
            if tunnel.closed.is_set():
                continue
            if tunnel in self._pushing:
                settled = False
                continue
            done, when = self._pushed.get(tunnel, ("", -self.retry))
            if done in (digest, REFUSED):
                continue
            settled = False
            if not done and now - when < self.retry:
                continue
            self._pushing.add(tunnel)
            self._spawn(self._push(tunnel, node.node_id, hubs))
        self._clean = key if settled else None

    async def _push(self, tunnel: Tunnel, node_id: str, hubs: HubList) -> None:
        digest, body = hubs.digest(), hubs.encode()
        fields = {"node_id": node_id, "digest": digest}
        try:
            async with self._slots:
                channel = await tunnel.open_channel(
                    HUBS_KIND, {"digest": digest}, timeout=self.timeout
                )
                reply = b""
                try:
                    channel.write(body)
                    channel.write_eof()
                    async with asyncio.timeout(self.timeout):
                        while data := await channel.read(1024):
                            reply = (reply + data)[:16]
                finally:
                    channel.close()
            if reply != b"ok":
                log.warning("agent did not take the hub list", extra=fields)
                self._pushed[tunnel] = ("", time.monotonic())
                return
            self._pushed[tunnel] = (digest, time.monotonic())
            log.debug("hub list pushed", extra=fields)
        except ChannelOpenError as exc:
            if exc.code == OpenFailure.UNKNOWN_KIND:  # an older agent: one tunnel, as before
                log.debug("agent predates the hub list; not pushed again", extra=fields)
                self._pushed[tunnel] = (REFUSED, time.monotonic())
            else:
                self._pushed[tunnel] = ("", time.monotonic())
        except (TunnelClosed, TimeoutError, ConnectionError, ChannelClosedError):
            self._pushed[tunnel] = ("", time.monotonic())
        finally:
            self._pushing.discard(tunnel)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        """Sweep each :attr:`interval` seconds and on :meth:`poke`, until cancelled."""
        while not self._closed:
            self._poked.clear()  # before the sweep: a poke during it is not lost
            try:
                self.push_due()
            except Exception:
                log.exception("hub list sweep failed; will retry")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self.interval)

    async def close(self) -> None:
        """Stop pushing and cancel the pushes in flight."""
        self._closed = True
        self._poked.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
