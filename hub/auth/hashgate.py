"""A hub-wide cap on password hashes in progress, with a bounded queue and a deadline.

Every login and invite acceptance costs one Argon2id run (~0.2 s of CPU, 64 MiB).
Per-address limits do not stop guesses from many addresses (an IPv6 /64, a botnet),
so without this cap a burst queues hundreds of hashes and a real user waits
seconds behind them. Here at most ``max_hashes`` run at once; at most
``max_waiting`` more wait, each for at most ``max_wait`` seconds; any other
attempt is refused at once with :data:`BUSY_MESSAGE` (docs/security.md).

Waiters queue in two FIFOs: attempts from an address where someone logged in
successfully in the last day (``priority``, hub/auth/ratelimit.py) go first, so a user
logging in again from their usual address is served ahead of a flood of guesses
from fresh addresses. The lane depends on the address only, never on the name:
a lane for known user names would answer faster for real names than for unknown
ones under load, telling an attacker which names exist. The asyncio adapter is
thin; the clock is the event loop's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

BUSY_MESSAGE = "login refused: the hub is busy; try again in a few seconds"
BUSY_REASON = "hub busy"


@dataclass(frozen=True)
class HashGatePolicy:
    max_hashes: int = 2
    """Password hashes running at once (the Argon2 pool has two threads)."""
    max_waiting: int = 32
    """Attempts that may wait for a slot, in each lane; more are refused at once."""
    max_wait: float = 3.0
    """Seconds an attempt waits for a slot before it is refused."""


class HubBusy(Exception):
    """No hash slot within the deadline (or the queue is full)."""


class HashGate:
    def __init__(self, policy: HashGatePolicy | None = None) -> None:
        self.policy = policy or HashGatePolicy()
        self._running = 0
        self._waiting: list[asyncio.Future[None]] = []
        self._priority: list[asyncio.Future[None]] = []
        #: the most hashes that ran at once since start (observability, tests)
        self.peak = 0
        #: attempts refused because the hub was busy
        self.refused = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return len(self._waiting) + len(self._priority)

    @contextlib.asynccontextmanager
    async def slot(self, priority: bool = False) -> AsyncIterator[None]:
        """Hold one hash slot for the ``async with`` body; raise :class:`HubBusy` if none
        frees up within ``max_wait`` seconds or too many attempts already wait in the
        lane (``priority``: the lane served first)."""
        await self._acquire(priority)
        try:
            yield
        finally:
            self._release()

    async def run(self, work: Callable[[], Awaitable[T]], priority: bool = False) -> T:
        """``await work()`` (a password hash in the worker pool) in a slot, as :meth:`slot`,
        but the slot is held until the work ends even if the caller is cancelled: the
        worker thread keeps hashing, and a slot freed early would let more hashes run
        (or queue in the pool) than the cap."""
        await self._acquire(priority)
        try:
            task = asyncio.ensure_future(work())
        except BaseException:
            self._release()
            raise
        task.add_done_callback(self._work_done)
        return await asyncio.shield(task)

    def _work_done(self, task: asyncio.Future[Any]) -> None:
        self._release()
        if not task.cancelled():
            task.exception()  # retrieved: a caller cancelled meanwhile does not log it

    async def _acquire(self, priority: bool) -> None:
        p = self.policy
        ahead = self._priority or (not priority and self._waiting)
        if self._running < p.max_hashes and not ahead:
            self._take()
            return
        queue = self._priority if priority else self._waiting
        if len(queue) >= p.max_waiting:
            self.refused += 1
            raise HubBusy
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(waiter)
        try:
            async with asyncio.timeout(p.max_wait):
                await waiter  # _release() hands the slot over: _running already counts it
        except BaseException as exc:
            if waiter in queue:
                queue.remove(waiter)
                waiter.cancel()
            elif waiter.done() and not waiter.cancelled():
                self._release()  # handed over just as the deadline hit: pass it on
            if isinstance(exc, TimeoutError):
                self.refused += 1
                raise HubBusy from None
            raise

    def _take(self) -> None:
        self._running += 1
        self.peak = max(self.peak, self._running)

    def _release(self) -> None:
        self._running -= 1
        while (self._priority or self._waiting) and self._running < self.policy.max_hashes:
            waiter = (self._priority or self._waiting).pop(0)
            if not waiter.done():
                self._take()
                waiter.set_result(None)
