"""Connection-level noise, counted and summarised at most once per interval (sans-I/O).

A port on the internet sees scanners, half-open connections and clients that
give up: one log line each buried the hub's own lines (5,058 lines in one
flood test) and cost a write per connection under attack. The listener
counts them here instead, by stage and reason, and logs one summary line per
interval that had any, e.g.::

    connections dropped in the last 60 s: 5058 before TLS (closed early 5000,
    not TLS 58), 12 TLS handshake failures (no reply to our flight 10, ...);
    most from 127.0.0.2 (4000)

The clock is passed in; :meth:`DropCounter.summary` is called on a timer.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["STAGES", "DropCounter"]

#: stages in the order they appear in a summary, with their wording
STAGES: dict[str, str] = {
    "refused": "refused at accept",
    "hello": "before TLS",
    "queue": "while queued",
    "tls": "TLS handshake failures",
    "ws": "websockets aborted",
}

#: distinct source addresses remembered per interval (a spoofed flood must not grow it)
MAX_SOURCES = 1024


@dataclass
class DropCounter:
    #: seconds between summaries (and the longest a drop waits to be reported)
    interval: float = 60.0
    _started: float | None = field(default=None, init=False)
    _reasons: dict[str, Counter[str]] = field(default_factory=dict, init=False)
    _sources: Counter[str] = field(default_factory=Counter, init=False)
    #: drops ever counted, by stage (for stats)
    totals: Counter[str] = field(default_factory=Counter, init=False)

    def add(self, stage: str, reason: str, now: float, source: str | None = None) -> None:
        """Count one dropped connection: ``stage`` a key of :data:`STAGES`."""
        if self._started is None:
            self._started = now
        self._reasons.setdefault(stage, Counter())[reason] += 1
        self.totals[stage] += 1
        if source is not None and (source in self._sources or len(self._sources) < MAX_SOURCES):
            self._sources[source] += 1

    def summary(self, now: float) -> str | None:
        """The line to log if an interval has passed since the first drop not yet
        reported, else None. A returned line starts a new interval."""
        if self._started is None or now - self._started < self.interval:
            return None
        parts = []
        for stage, words in STAGES.items():
            reasons = self._reasons.get(stage)
            if not reasons:
                continue
            detail = ", ".join(f"{why} {n}" for why, n in reasons.most_common())
            parts.append(f"{sum(reasons.values())} {words} ({detail})")
        line = f"connections dropped in the last {now - self._started:.0f} s: " + ", ".join(parts)
        if self._sources:
            source, n = self._sources.most_common(1)[0]
            line += f"; most from {source} ({n})"
        self._started = None
        self._reasons.clear()
        self._sources.clear()
        return line
