"""Work that must run on one hub of the cluster at a time, held by a lease.

Every hub runs a :class:`Singleton` per kind of such work (hub/app.py: the auto CA
rotation, presence and hub-record clean-up, audit retention, firmware roll-out
decisions). Each tries to take the named lease in the storage
(:meth:`hub.storage.api.Leases.acquire`, one atomic UPSERT) every ``ttl / 3``
seconds; the hub that has it runs the job and renews it at the same pace, the
others keep trying. A holder that dies stops renewing: its lease lapses ``ttl``
after its last renewal and another hub takes it then (a hub that was refused
reads the lease's end once and tries again right at it), so the work moves
within one lease period. A clean stop releases the lease: another hub takes it
at its next try (``ttl / 3``).

A holder whose renewals fail (the database unreachable) keeps running the job
until :data:`MARGIN` of the lease before its end by its own clock, then cancels
it; another hub can take the lease only at its end, so the two never overlap as
long as the hubs' clocks agree to within that margin (run NTP). The jobs
themselves still write with compare-and-set where a double step would harm
(``rotation.advance``, ``firmware.claim`` / ``finish``).

:class:`LeaseKeeper` is the decision core (no I/O, time passed in);
:class:`Singleton` is the asyncio runner around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from hub.storage.api import Leases

__all__ = ["MARGIN", "LeaseKeeper", "Singleton"]

log = logging.getLogger("remoteler.hub.singleton")

#: The holder stops its job this fraction of ``ttl`` before its lease's end when it
#: could not renew: room for the clocks of two hubs to disagree.
MARGIN = 1 / 6

Job = Callable[[], Coroutine[Any, Any, None]]


class LeaseKeeper:
    """When to try for the lease, and whether this hub holds it (sans-I/O).

    Call :meth:`request` for the arguments of the next ``acquire``, then exactly one
    of :meth:`taken`, :meth:`refused` or :meth:`failed` with its outcome; each
    returns True when the lease was *lost* by it (the job must stop). :meth:`wait`
    says how long to sleep before the next try.
    """

    def __init__(self, ttl: float) -> None:
        if ttl <= 0:
            raise ValueError("a lease's ttl must be positive")
        self.ttl = ttl
        #: when our lease ends as we last wrote it (0: we do not hold it)
        self.held_until = 0.0
        #: the other holder's lease end, as last read (None: unknown)
        self.other_until: float | None = None

    @property
    def interval(self) -> float:
        return self.ttl / 3

    def held(self, now: float) -> bool:
        """Whether this hub may act as the holder at ``now``."""
        return now < self.held_until - self.ttl * MARGIN

    def request(self, now: float) -> tuple[float, float]:
        """``(expires, now)`` for :meth:`~hub.storage.api.Leases.acquire`."""
        return now + self.ttl, now

    def timeout(self, now: float) -> float:
        """How long the ``acquire`` may take: never past the point the job must stop."""
        if self.held_until:
            return max(0.001, min(self.interval, self.held_until - self.ttl * MARGIN - now))
        return self.interval

    def taken(self, at: float) -> bool:
        """``acquire`` (called with ``now=at``) returned True."""
        self.held_until = max(self.held_until, at + self.ttl)
        self.other_until = None
        return False

    def refused(self, other_until: float | None) -> bool:
        """``acquire`` returned False: another hub holds it (until ``other_until``, if read)."""
        lost = bool(self.held_until)
        self.held_until = 0.0
        self.other_until = other_until
        return lost

    def failed(self, now: float) -> bool:
        """``acquire`` raised or timed out: held still, unless past the stopping point."""
        if self.held_until and not self.held(now):
            self.held_until = 0.0
            return True
        return False

    def drop(self) -> None:
        """The runner stopped (or released the lease)."""
        self.held_until = 0.0
        self.other_until = None

    def wait(self, now: float) -> float:
        """Seconds until the next try: a renewal every ``ttl / 3`` while held (sooner if
        a renewal failed and the stopping point comes first); otherwise every ``ttl / 3``,
        or right at the other holder's lease end when that comes first."""
        wait = self.interval
        if self.held_until:
            wait = min(wait, self.held_until - self.ttl * MARGIN - now)
        elif self.other_until is not None:
            wait = min(wait, self.other_until - now + 0.001)
        return max(0.001, wait)


class Singleton:
    """Run ``job`` on whichever hub holds the lease ``name`` (:meth:`run`, forever)."""

    def __init__(
        self,
        leases: Leases,
        name: str,
        holder: str,
        ttl: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.leases = leases
        self.name = name
        self.holder = holder
        self.clock = clock
        self.core = LeaseKeeper(ttl)
        self._job: asyncio.Task[None] | None = None
        self._fields = {"lease": name, "hub_id": holder}

    @property
    def held(self) -> bool:
        """Whether this hub holds the lease now (by its own clock)."""
        return self.core.held(self.clock())

    async def run(self, job: Job | None = None) -> None:
        """Until cancelled: take and renew the lease; run ``job()`` while it is held
        (None: only hold it, for work gated on :attr:`held`). Cancelled: the job is
        cancelled and the lease released."""
        try:
            while True:
                if self.core.failed(self.clock()):  # the loop ran late, past the stopping point
                    log.warning("lease lost: not renewed in time", extra=self._fields)
                self._sync(job)  # (then) no job runs while the lease is in doubt
                await self._try()
                self._sync(job)
                await asyncio.sleep(self.core.wait(self.clock()))
        finally:
            await self._stop_job()
            was_held = bool(self.core.held_until)
            self.core.drop()
            if was_held:
                await self._release()

    async def _try(self) -> None:
        core = self.core
        was_held = core.held(self.clock())
        expires, at = core.request(self.clock())
        try:
            async with asyncio.timeout(core.timeout(at)):
                ok = await self.leases.acquire(self.name, self.holder, expires, at)
        except Exception as exc:  # the storage (or its timeout): held until the stopping point
            why, fields = _why(exc), self._fields
            if core.failed(self.clock()):
                log.warning("lease lost: it could not be renewed (%s)", why, extra=fields)
            elif was_held:
                log.warning("lease renewal failed; will retry: %s", why, extra=fields)
            return
        if ok:
            core.taken(at)
            if not was_held:
                log.info("lease acquired", extra=self._fields)
            return
        other: float | None = None
        with contextlib.suppress(Exception):  # only aims the next try
            async with asyncio.timeout(core.interval):
                lease = await self.leases.get(self.name)
            other = lease.expires if lease is not None else None
        if core.refused(other):
            log.info("lease lost: another hub holds it", extra=self._fields)

    def _sync(self, job: Job | None) -> None:
        """Start the job when held and not running; cancel it when not held."""
        held = self.held
        task = self._job
        if task is not None and task.done():
            self._job = None
            if not task.cancelled() and (exc := task.exception()) is not None:
                log.error("singleton job failed; restarting it", exc_info=exc, extra=self._fields)
        if held and self._job is None and job is not None:
            self._job = asyncio.ensure_future(job())
        elif not held and self._job is not None:
            self._job.cancel()  # awaited by _stop_job or seen done at the next _sync

    async def _stop_job(self) -> None:
        task, self._job = self._job, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _release(self) -> None:
        try:
            async with asyncio.timeout(max(1.0, self.core.interval)):
                await self.leases.release(self.name, self.holder)
        except Exception as exc:  # it lapses by itself
            log.warning("lease not released (%s); it lapses", _why(exc), extra=self._fields)
        else:
            log.info("lease released", extra=self._fields)


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
