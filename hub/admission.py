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
from collections import deque
from dataclasses import dataclass, field

__all__ = ["Gate", "LagGovernor"]


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
    """A FIFO of waiters for ``capacity`` permits; :meth:`resize` may change the
    capacity while permits are out (those already out are never taken back)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)  # granted and cancelled waiters leave the queue

    async def acquire(self) -> None:
        """Wait for a permit; the caller must :meth:`release` it exactly once."""
        if self.in_use < self.capacity and not self._waiters:
            self.in_use += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as we were cancelled: hand it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def resize(self, capacity: int) -> None:
        self.capacity = capacity
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)
