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
    #: fewest permits: a storm always makes progress
    floor: int = 2
    #: seconds of lag per tick above which permits shrink
    target: float = 0.02
    #: permits in force; starts at the ceiling (an idle hub admits at full rate)
    capacity: int = field(init=False)

    def __post_init__(self) -> None:
        if self.ceiling < 1:
            raise ValueError("ceiling must be >= 1")
        self.floor = max(1, min(self.floor, self.ceiling))
        self.capacity = self.ceiling

    def observe(self, lag: float) -> int:
        """Take one tick's measured lag (seconds past the timer); return the capacity."""
        if lag > self.target:
            self.capacity = max(self.floor, self.capacity * 2 // 3)
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
        return sum(1 for w in self._waiters if not w.done())

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
