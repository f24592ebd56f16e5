"""A hub-wide budget for audit events that a peer with no credentials can cause.

A rate limiter's refusal costs the peer one request; one durable audit row each
(~2 KB on disk with its indexes; one loopback address made 220 refused joins a
second on the test machine) would let a single address grow the audit database
by ~40 GB a day. So refusals by a limiter are audited within a token bucket
(``burst`` at once, then one per ``refill`` seconds, hub-wide); the others are
only counted, and the next refusal audited carries that count as
``suppressed``. Attempts that were judged (a wrong join token) are not budgeted
here: the failure limits already bound them (docs/security.md).

Sans-I/O: time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AuditBudgetPolicy:
    burst: int = 100
    """Refusals audited at once, hub-wide."""
    refill: float = 10.0
    """Seconds per refusal audited after the burst (8,640 a day at most)."""


@dataclass
class AuditBudget:
    policy: AuditBudgetPolicy = field(default_factory=AuditBudgetPolicy)
    _tokens: float | None = None
    _updated: float = 0.0
    #: refusals not audited since the last one that was
    suppressed: int = 0

    def admit(self, now: float) -> int | None:
        """None: do not audit this refusal (it is counted). Otherwise audit it, with the
        returned number of refusals left out since the last one audited."""
        p = self.policy
        if self._tokens is None:
            self._tokens, self._updated = float(max(1, p.burst)), now
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(float(max(1, p.burst)), self._tokens + elapsed / p.refill)
        self._updated = now
        if self._tokens < 1:
            self.suppressed += 1
            return None
        self._tokens -= 1
        left_out, self.suppressed = self.suppressed, 0
        return left_out

    def fields(self, now: float) -> dict[str, Any] | None:
        """:meth:`admit` as the audit event's extra fields: None (do not audit), ``{}``,
        or ``{"suppressed": N}``."""
        left_out = self.admit(now)
        if left_out is None:
            return None
        return {"suppressed": left_out} if left_out else {}
