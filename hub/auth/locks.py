"""The hub's side of locks: see new ones at once, end what they cover, tell the agents.

The watcher follows the storage's change feed (``Storage.changes()``: this hub's
writes as they commit, other hubs' and processes' within about a second,
docs/storage.md): a change of locks, roles or users re-reads the locks table.
On every change of the set it ends the relays of sessions a lock now covers and
pushes the whole active set to each agent over a ``locks`` channel; an agent
that connects later gets the set within :data:`POLL_INTERVAL`. The table is
also re-read every :data:`REREAD_INTERVAL` seconds, for locks that expire.

A change of nodes ends the relays whose node's recording mode (``tctl nodes
set --recording``) is no longer the one they were opened in, so a long-lived
connection (OpenSSH ControlPersist) cannot outlive a switch to ``proxy``
unrecorded. The nodes table is read only then, or when a relay was opened
since the last check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from hub.api.tunnels import TunnelRegistry
from hub.storage.api import Change, Storage
from remoteler.locks import Lock, encode_locks, find_lock, lock_digest
from remoteler.protocol import LOCKS_KIND
from remoteler.wire.aio import Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.exceptions import ChannelOpenError, TunnelClosed

log = logging.getLogger("remoteler.hub.auth.locks")

#: Seconds between two sweeps of the agents for lock pushes (memory only).
POLL_INTERVAL = 1.0
#: Seconds between two reads of the locks table with no change on the feed.
REREAD_INTERVAL = 30.0
#: Topics of the change feed after which the locks table is read again.
LOCK_TOPICS = frozenset({"locks", "roles", "users"})
#: Seconds the agent gets to end a locked session itself (it shows the user the
#: message inside the session) before the hub cuts the relay.
RELAY_GRACE = 3.0
#: Seconds before retrying a push that failed.
PUSH_RETRY = 10.0
#: Pushes in flight at once (a lock change reaches a large fleet in waves).
MAX_PUSHES = 64
#: websocket close code for a relay ended by a lock (4000-4999: application use).
LOCKED_CLOSE_CODE = 4403
#: What the user of a relay ended by a recording-mode change is told.
RECORDING_CHANGED = "this node's recording mode changed; connect again"


def new_lock_id() -> str:
    return secrets.token_hex(6)


@dataclass
class Relay:
    user: str
    login: str
    nodes: tuple[str, ...]
    close: Callable[[str], Awaitable[None]]
    #: the node's recording mode when the relay was opened (None: not watched)
    recording: str | None = None
    ending: bool = False


class LockWatcher:
    def __init__(
        self,
        storage: Storage,
        registry: TunnelRegistry,
        clock: Callable[[], float] = time.time,
        interval: float = POLL_INTERVAL,
        grace: float = RELAY_GRACE,
    ) -> None:
        self.storage = storage
        self.registry = registry
        self.clock = clock
        self.interval = interval
        self.grace = grace
        self.locks: list[Lock] = []
        self.digest = ""
        self._relays: dict[int, Relay] = {}
        self._next_relay = 0
        #: tunnel -> (digest pushed, or "" while failing; time of the last attempt)
        self._pushed: weakref.WeakKeyDictionary[Tunnel, tuple[str, float]] = (
            weakref.WeakKeyDictionary()
        )
        self._pushing: set[Tunnel] = set()
        #: (digest, registry generation) of the last sweep that found nothing to do
        self._clean: tuple[str, int] | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._slots = asyncio.Semaphore(MAX_PUSHES)
        #: a change of nodes arrived since the last recording-mode check
        self._nodes_changed = False
        #: a change of locks, roles or users arrived since the last read of the locks
        self._locks_changed = True
        self._changed = asyncio.Event()
        #: relays opened since that check (their mode was read before they started)
        self._unchecked: set[int] = set()

    # sessions ------------------------------------------------------------------
    def track_relay(
        self,
        user: str,
        login: str,
        nodes: Sequence[str],
        close: Callable[[str], Awaitable[None]],
        recording: str | None = None,
    ) -> Callable[[], None]:
        """Watch a relayed session; call the returned function when it ends.

        ``nodes``: the node's id, then its name; ``recording``: the node's recording
        mode the relay was opened in (the relay is ended if that changes)."""
        key = self._next_relay
        self._next_relay += 1
        relay = Relay(user, login, tuple(nodes), close, recording)
        self._relays[key] = relay
        if recording is not None:
            self._unchecked.add(key)
        lock = find_lock(self.locks, user=user, login=login, nodes=relay.nodes, now=self.clock())
        if lock is not None:  # locked between the connect check and now
            self._end(relay, lock)

        def untrack() -> None:
            self._relays.pop(key, None)
            self._unchecked.discard(key)

        return untrack

    def _end(self, relay: Relay, lock: Lock) -> None:
        if relay.ending:
            return
        relay.ending = True
        log.info(
            "ending a locked session",
            extra={"user": relay.user, "login": relay.login, "lock_id": lock.id},
        )

        async def later() -> None:
            await asyncio.sleep(self.grace)
            with contextlib.suppress(Exception):
                await relay.close(f"session ended: {lock.refusal()}")

        self._spawn(later())

    async def check_recording(self) -> None:
        """End the relays whose node's recording mode changed since they opened."""
        if self._nodes_changed:
            self._nodes_changed = False
            keys = [k for k, r in self._relays.items() if r.recording is not None]
        else:
            keys = [k for k in self._unchecked if k in self._relays]
        self._unchecked.clear()
        if not keys:
            return
        modes = await self.storage.nodes.recordings([self._relays[k].nodes[0] for k in keys])
        for key in keys:
            relay = self._relays.get(key)
            if relay is None or relay.ending:
                continue
            mode = modes.get(relay.nodes[0])
            if mode is not None and mode != relay.recording:
                relay.ending = True
                log.info(
                    "ending a relay: the node's recording mode changed",
                    extra={"user": relay.user, "node_id": relay.nodes[0], "recording": mode},
                )
                self._spawn(self._close(relay, RECORDING_CHANGED))

    @staticmethod
    async def _close(relay: Relay, reason: str) -> None:
        with contextlib.suppress(Exception):
            await relay.close(reason)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # polling ---------------------------------------------------------------------
    async def refresh(self) -> bool:
        """Read the locks table; True if the active set changed."""
        now = self.clock()
        locks = await self.storage.locks.all(now)
        digest = lock_digest(locks)
        changed = digest != self.digest
        self.locks, self.digest = locks, digest
        if changed:
            log.info("lock set changed", extra={"locks": len(locks), "digest": digest})
            for relay in list(self._relays.values()):
                lock = find_lock(
                    locks, user=relay.user, login=relay.login, nodes=relay.nodes, now=now
                )
                if lock is not None:
                    self._end(relay, lock)
        return changed

    def agent_has(self, tunnel: Tunnel, digest: str) -> None:
        """The agent dialled saying it holds the lock set ``digest``: no push is due
        unless the hub's set differs."""
        if len(digest) == 16 and all(c in "0123456789abcdef" for c in digest):
            self._pushed[tunnel] = (digest, time.monotonic())

    def push_due(self) -> None:
        """Start a push to every live agent that lacks the current set.

        Skipped when neither the set nor the fleet changed since a sweep that found
        every agent up to date (an idle hub of 5,000 agents spent 4.5% of its CPU
        sweeping them every second)."""
        key = (self.digest, self.registry.generation)
        if key == self._clean:
            return
        now = time.monotonic()
        settled = True
        for live in self.registry.live():
            tunnel = live.tunnel
            if tunnel in self._pushing:
                settled = False
                continue
            done, when = self._pushed.get(tunnel, ("", -PUSH_RETRY))
            if done == self.digest:
                continue
            settled = False
            if not done and now - when < PUSH_RETRY:
                continue
            self._pushing.add(tunnel)
            self._spawn(self._push(tunnel, live.node_id))
        self._clean = key if settled else None

    async def _push(self, tunnel: Tunnel, node_id: str) -> None:
        digest, body = self.digest, encode_locks(self.locks)
        try:
            async with self._slots:
                channel = await tunnel.open_channel(LOCKS_KIND, {"digest": digest}, timeout=10)
                reply = b""
                try:
                    channel.write(body)
                    channel.write_eof()
                    async with asyncio.timeout(10):
                        while data := await channel.read(1024):
                            reply = (reply + data)[:16]
                finally:
                    channel.close()
            if reply != b"ok":  # the agent refused the set (too large, unreadable)
                log.warning("agent did not take the lock set", extra={"node_id": node_id})
                self._pushed[tunnel] = ("", time.monotonic())
                return
            self._pushed[tunnel] = (digest, time.monotonic())
            log.debug("locks pushed", extra={"node_id": node_id, "digest": digest})
        except ChannelOpenError as exc:
            if exc.code == OpenFailure.UNKNOWN_KIND:  # an older agent: nothing to push to
                self._pushed[tunnel] = (digest, time.monotonic())
            else:
                self._pushed[tunnel] = ("", time.monotonic())
        except (TunnelClosed, TimeoutError, ConnectionError):
            self._pushed[tunnel] = ("", time.monotonic())
        finally:
            self._pushing.discard(tunnel)

    async def follow(self, changes: AsyncIterator[Change]) -> None:
        """Note each change of the feed for :meth:`run` (until the feed ends)."""
        async for change in changes:
            if change.topic in LOCK_TOPICS:
                self._locks_changed = True
                self._changed.set()
            elif change.topic == "nodes":
                self._nodes_changed = True
                self._changed.set()

    async def run(self) -> None:
        changes = self.storage.changes()
        follower = asyncio.ensure_future(self.follow(changes))
        last_read = -math.inf
        try:
            while True:
                self._changed.clear()  # before the reads: a change during them is not lost
                try:
                    now = time.monotonic()
                    if self._locks_changed or now - last_read >= REREAD_INTERVAL:
                        self._locks_changed = False
                        last_read = now
                        await self.refresh()
                    self.push_due()
                    await self.check_recording()
                except Exception:
                    log.exception("lock refresh failed; will retry")
                    self._locks_changed = True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self.interval)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await changes.aclose()  # type: ignore[attr-defined]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
