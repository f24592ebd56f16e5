"""Agent admission steered by event-loop lag, so ``tsh`` stays fast in a storm.

The hub serves agents and users on one event loop, which runs every ready
callback in turn. In a reconnect storm the ready callbacks are mostly agents'
TLS handshakes: with 64 in flight one loop iteration took tens of ms, and a
``tsh ls`` needs a dozen iterations (accept, ClientHello, TLS flights, upgrade,
database, reply), so it waited over a second while the hub sat at 75% of a
core. Fewer handshakes in flight make iterations short without making the
storm slower on a CPU-bound hub, but over high-RTT links a small fixed number
would cap the admission rate (each permit waits out the agent's round trips).

So the number of agent handshakes in flight follows the loop's lag, as TCP's
window follows loss (AIMD): :class:`LagGovernor` is told the measured lag of
each tick and gives the permit count to use; :class:`Gate` is a FIFO whose
capacity may change while permits are out. Both are sans-I/O apart from the
futures the gate hands its waiters; the listener measures the lag.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["Gate", "LagGovernor", "source_key"]


@dataclass
class LagGovernor:
    """Additive increase, multiplicative decrease of a permit count by loop lag."""

    #: most permits (the operator's ``--max-agent-handshakes``)
    ceiling: int
    #: fewest permits (clamped to the ceiling): a storm always makes progress, and
    #: a few peers that stall their handshake cannot hold the lane shut
    floor: int = 8
    #: seconds of lag per tick above which permits shrink
    target: float = 0.02
    #: ticks between two decreases: a cut shows in the lag only once the
    #: handshakes already admitted are through (TCP cuts once per round trip)
    cooldown: int = 4
    #: permits in force; starts at the ceiling (an idle hub admits at full rate)
    capacity: int = field(init=False)
    _since_cut: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.ceiling < 1:
            raise ValueError("ceiling must be >= 1")
        self.floor = max(1, min(self.floor, self.ceiling))
        self.capacity = self.ceiling
        self._since_cut = self.cooldown

    def observe(self, lag: float, queued: bool = True) -> int:
        """Take one tick's measured lag (seconds past the timer) and whether agents
        are waiting for a permit; return the capacity to use.

        Lag with no agent waiting is not the lane's doing (a big ``tsh ls``, the
        collector): the capacity is then left alone rather than cut.
        """
        self._since_cut += 1
        if lag > self.target:
            if queued and self._since_cut >= self.cooldown:
                self.capacity = max(self.floor, self.capacity * 2 // 3)
                self._since_cut = 0
        elif lag < self.target / 2:
            self.capacity = min(self.ceiling, self.capacity + 1)
        return self.capacity


class Gate:
    """Waiters for ``capacity`` permits, served fairly across keys.

    A key is a source address (:func:`source_key`). Each key holds at most
    ``per_key`` permits at once; the waiters of one key are served in arrival
    order, and keys with waiters take turns (round robin), so one address with
    a thousand queued connections delays another address's next connection by
    one permit, not by a thousand. With one key this is a plain FIFO.
    :meth:`resize` may change the capacity while permits are out (those
    already out are never taken back).
    """

    def __init__(self, capacity: int, per_key: int | None = None) -> None:
        self.capacity = capacity
        #: most permits one key holds at once (None: no cap)
        self.per_key = per_key
        self.in_use = 0
        self._waiting = 0
        self._held: dict[Hashable, int] = {}
        self._queues: dict[Hashable, deque[asyncio.Future[None]]] = {}
        #: keys with waiters and a permit to spare, in turn order (may hold stale keys)
        self._turns: deque[Hashable] = deque()
        self._in_turns: set[Hashable] = set()

    @property
    def waiting(self) -> int:
        return self._waiting  # granted and cancelled waiters leave the queue

    def held(self, key: Hashable = None) -> int:
        """Permits ``key`` holds now."""
        return self._held.get(key, 0)

    def _may_take(self, key: Hashable) -> bool:
        return self.per_key is None or self._held.get(key, 0) < self.per_key

    async def acquire(self, key: Hashable = None) -> None:
        """Wait for a permit for ``key``; the caller must :meth:`release` it exactly once,
        with the same key."""
        if self.in_use < self.capacity and not self._turns and self._may_take(key):
            self._grant(key)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(waiter)
        self._waiting += 1
        self._offer_turn(key)
        self._wake()  # the turns ahead may all be stale
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(key)  # granted just as we were cancelled: hand it on
            else:
                self._waiting -= 1
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
                if not queue and self._queues.get(key) is queue:
                    del self._queues[key]  # its stale turn is skipped in _wake
                    self._prune_turns()
            raise

    def release(self, key: Hashable = None) -> None:
        self.in_use -= 1
        held = self._held[key] - 1
        if held:
            self._held[key] = held
        else:
            del self._held[key]
        self._offer_turn(key)
        self._wake()

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._wake()

    def _grant(self, key: Hashable) -> None:
        self.in_use += 1
        self._held[key] = self._held.get(key, 0) + 1

    def _offer_turn(self, key: Hashable) -> None:
        if key in self._queues and key not in self._in_turns and self._may_take(key):
            self._turns.append(key)
            self._in_turns.add(key)

    def _prune_turns(self) -> None:
        """Drop stale turns once they outnumber live ones: while the gate is full,
        peers from ever new addresses that give up would otherwise pile them up."""
        if len(self._turns) > 2 * len(self._queues) + 16:
            self._turns = deque(k for k in self._turns if k in self._queues)
            self._in_turns = set(self._turns)

    def _wake(self) -> None:
        while self._turns and self.in_use < self.capacity:
            key = self._turns.popleft()
            self._in_turns.discard(key)
            queue = self._queues.get(key)
            if queue is None or not self._may_take(key):
                continue  # its waiters left, or it took its share meanwhile
            waiter = None
            while queue and waiter is None:
                waiter = queue.popleft()
                if waiter.done():  # cancelled: its acquire() counts it out
                    waiter = None
            if not queue:
                del self._queues[key]
            if waiter is None:
                continue
            self._waiting -= 1
            self._grant(key)
            waiter.set_result(None)
            self._offer_turn(key)  # its next waiter goes to the back of the line


def source_key(host: str) -> str:
    """The key a peer's connections are counted under: its IPv4 address, or the
    /64 of its IPv6 address (one host often holds a whole /64)."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)
