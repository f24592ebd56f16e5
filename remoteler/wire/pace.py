"""How much to hand the link at once, from how fast it drains (sans-I/O, time passed in).

Everything written below the frame scheduler (a websocket frame being sent, the
TLS and transport buffers, the kernel's unsent queue) is out of the scheduler's
hands: a keystroke framed now waits behind all of it. On a fast link that is
microseconds, and big frames and buffers save CPU; on a 10 KiB/s cellular link a
256 KiB frame alone is 25 s. :class:`LinkPacer` estimates the link's drain rate
from the writer's blocked sends and sizes both the next frame and the buffers
below to about :data:`TARGET_DELAY` of it (``docs/tunnels.md``, *Slow links*).

The estimate: a send that blocked (the buffers below were full) returns when they
drained to their low-water mark, so between the ends of two blocked sends the
link drained what the writer sent meanwhile, blocked or not: those bytes over that
time (summed over :data:`WINDOW` s) are the drain rate. An idle writer
(:meth:`LinkPacer.idle`) starts a new interval. Sends that do not block say the
link may be faster, but only once they passed more than the buffers below can
hold (they are sized to the budget: :data:`PROOF` budgets with none blocking
means the link drained most of them) fast enough for the budget: then the budget
doubles, until sends block again or it passes the ceiling (no cap). A trickle of small sends
(keystrokes, control frames) proves nothing and changes nothing.
"""

from __future__ import annotations

__all__ = ["BLOCKED", "FLOOR", "PROOF", "START", "TARGET_DELAY", "WINDOW", "LinkPacer"]

#: Seconds of the link's drain rate that may wait below the scheduler.
TARGET_DELAY = 0.1
#: Smallest budget, bytes: a DATA frame of 1 KiB costs ~5 % in framing and TLS.
FLOOR = 1024
#: A send that took longer than this (seconds) waited for the link.
BLOCKED = 0.002
#: Seconds of blocked sends summed into one rate sample.
WINDOW = 0.2
#: Budgets sent without a block that prove the link drains faster than the budget
#: (the buffers below hold about three: TLS, transport, kernel unsent).
PROOF = 8
#: Budget of a new tunnel, bytes: its first frames cost a slow link ~0.4 s each.
START = 4096


class LinkPacer:
    """Drain-rate estimate of one tunnel's link and the byte budget it implies.

    Call :meth:`sent` after every websocket send with its size and how long it
    took, and :meth:`idle` when the writer has nothing left to send; read
    :attr:`budget` (``None`` while the link keeps up) to cap the next DATA frame
    and the write buffers below.
    """

    __slots__ = (
        "_acc_bytes",
        "_acc_time",
        "_free_bytes",
        "_free_since",
        "_int_bytes",
        "_last_block",
        "budget",
        "ceiling",
        "rate",
    )

    def __init__(self, ceiling: int, start: int | None = START) -> None:
        self.ceiling = ceiling
        """Budget above which the link counts as keeping up (``budget`` becomes None)."""
        self.budget: int | None = start if start is None else max(FLOOR, min(start, ceiling))
        """Bytes the link drains in :data:`TARGET_DELAY`; None: no cap."""
        self.rate: float | None = None
        """Last measured drain rate, bytes/s (None until a window of blocked sends)."""
        self._last_block: float | None = None  # end of the last blocked send
        self._int_bytes = 0  # sent since then
        self._acc_bytes = 0  # summed intervals, until WINDOW
        self._acc_time = 0.0
        self._free_bytes = 0  # sent without blocking since _free_since
        self._free_since: float | None = None

    def sent(self, nbytes: int, elapsed: float, now: float) -> None:
        """A send of ``nbytes`` returned after ``elapsed`` seconds, at ``now``."""
        if self._last_block is not None:
            self._int_bytes += nbytes
        if elapsed >= BLOCKED:
            self._free_bytes, self._free_since = 0, None
            if self._last_block is not None:
                self._acc_bytes += self._int_bytes
                self._acc_time += now - self._last_block
            self._last_block, self._int_bytes = now, 0
            if self._acc_time >= WINDOW:
                self.rate = self._acc_bytes / self._acc_time
                self._acc_bytes, self._acc_time = 0, 0.0
                measured = int(self.rate * TARGET_DELAY)
                self.budget = None if measured >= self.ceiling else max(FLOOR, measured)
            return
        cap = self.budget
        if cap is None:
            return
        if self._free_since is None or now - self._free_since > 1.0:
            self._free_bytes, self._free_since = 0, now - elapsed
        self._free_bytes += nbytes
        if self._free_bytes >= PROOF * cap:
            # the link drained at least (PROOF - 3) budgets in this time
            took = max(now - self._free_since, 1e-6)
            if (PROOF - 3) * cap / took * TARGET_DELAY >= cap:
                self.budget = None if 2 * cap >= self.ceiling else 2 * cap
            self._free_bytes, self._free_since = 0, None

    def idle(self) -> None:
        """The writer ran out of data: the time until its next send is not the link's."""
        self._last_block, self._int_bytes = None, 0

    def frame_max(self, chunk_max: int) -> int:
        """Largest DATA payload to frame next."""
        return chunk_max if self.budget is None else min(chunk_max, self.budget)
