"""The hub's time as this device knows it (sans-I/O: local times are passed in).

Many devices boot without a real-time clock, or drift for months. The agent
does not set the system clock; it keeps the *skew* (device minus hub, from
:mod:`remoteler.clockskew`) learnt from every heartbeat answer, and where time
matters to security or to the audit trail it uses hub-corrected time
(``local - skew``): user certificate validity, the hub's TLS certificate on a
fallback dial (edge_agent/clockdial.py), audit event timestamps. A skew beyond
:attr:`HubClock.bound` is reported but never corrected for: the local clock
then rules, and the errors it causes say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from remoteler.clockskew import (
    DEFAULT_MAX_SKEW,
    REPORT_THRESHOLD,
    SkewSample,
    describe_skew,
    human_span,
    within,
)

__all__ = ["JUMP_TOLERANCE", "REPORT_INTERVAL", "HubClock", "SkewReport"]

#: Least time between two ``clock.skew`` reports (seconds, monotonic): a skew that
#: flaps around :data:`REPORT_THRESHOLD`, or an estimate that jumps by minutes on a
#: link with a minutes-long round trip, gives at most one audit event per interval.
REPORT_INTERVAL = 600.0
#: How far the local wall clock may move against the monotonic clock after a skew
#: was learnt before that skew is stale (seconds): NTP stepping the clock, ``date
#: -s``, or a suspend. The correction is then dropped until the next answer.
JUMP_TOLERANCE = 5.0


@dataclass(frozen=True, slots=True)
class SkewReport:
    """A ``clock.skew`` audit event to emit (the caller emits it)."""

    skew: float
    """Device minus hub, seconds."""
    corrected: bool
    """Whether the agent corrects for it (within the bound)."""
    message: str
    """``this device's clock is 20 min behind the hub's`` and what follows from it."""


class HubClock:
    """The last skew estimate, and hub-corrected time from it."""

    def __init__(
        self,
        bound: float = DEFAULT_MAX_SKEW,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        #: largest skew corrected for (``--max-clock-skew``, default 24 h)
        self.bound = bound
        self._wall = wall
        self._mono = mono
        #: device minus hub, seconds; None until the hub's time is known
        self.skew: float | None = None
        #: the estimate's error bound (half the round trip)
        self.error = 0.0
        self._reported: float | None = None
        #: wall minus monotonic time when the skew was learnt (a clock step moves it)
        self._base = 0.0
        #: monotonic time of the last report (None: never)
        self._reported_at: float | None = None

    def observe(self, sample: SkewSample) -> SkewReport | None:
        """Take a new estimate; return a report when the skew newly passes
        :data:`REPORT_THRESHOLD` or moved by more than that since the last one, at
        most once per :data:`REPORT_INTERVAL` (news held back meanwhile is reported
        by the first estimate after it, if still news)."""
        self.skew, self.error = sample.skew, sample.error
        self._base = self._wall() - self._mono()
        if abs(sample.skew) < REPORT_THRESHOLD:
            self._reported = None  # fixed (NTP came up): a new skew is news again
            return None
        if self._reported is not None and abs(sample.skew - self._reported) < REPORT_THRESHOLD:
            return None
        now = self._mono()
        if self._reported_at is not None and now - self._reported_at < REPORT_INTERVAL:
            return None
        self._reported, self._reported_at = sample.skew, now
        return SkewReport(sample.skew, self.corrected, self.explain())

    @property
    def corrected(self) -> bool:
        """True if a known skew is within the bound (hub-corrected time is used)."""
        self._forget_if_stepped()
        return self.skew is not None and within(self.skew, self.bound)

    def _forget_if_stepped(self) -> None:
        """Forget the skew if the local clock was set since it was learnt: it no
        longer says how far the clock is off (the next heartbeat answer will)."""
        stepped = abs(self._wall() - self._mono() - self._base) > JUMP_TOLERANCE
        if self.skew is not None and stepped:
            self.skew, self.error = None, 0.0

    def correction(self) -> float:
        """Seconds to add to the local clock for hub time (0 if unknown or out of bound)."""
        return -self.skew if self.skew is not None and self.corrected else 0.0

    def now(self) -> float:
        """Hub-corrected wall-clock time (the local clock if no usable skew)."""
        return self._wall() + self.correction()

    def explain(self) -> str:
        """One line on the skew and its consequence, or "" when it is negligible."""
        self._forget_if_stepped()
        if self.skew is None or abs(self.skew) < REPORT_THRESHOLD:
            return ""
        text = describe_skew(self.skew)
        if self.corrected:
            return f"{text}; certificates and audit times use the hub's time"
        return (
            f"{text}, more than the {human_span(self.bound)} this agent corrects for; "
            "set the clock (NTP, or 'date -s')"
        )

    def hint(self) -> str:
        """`` (this device's clock is ...)`` to append to an error, or ""."""
        text = self.explain()
        return f" ({text})" if text else ""
