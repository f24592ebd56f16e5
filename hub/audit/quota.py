"""How many audit events each node may have stored per minute: a token bucket per node.

Sans-I/O: every method takes ``now`` (monotonic seconds). The hub's audit channel
(:mod:`hub.audit.ingest`) asks :meth:`AuditQuotas.take` before storing a batch;
the events past what the bucket holds are refused with a retry-after, and stay
in the agent's outbox until it sends them again (docs/audit.md, "Per-node quota").

A node that sends again before the retry-after it was given is *early*; its
batch is refused whole, without being looked at. :data:`MAX_STRIKES` early
batches in a row and the hub closes the node's audit channel and refuses to open
another until the retry-after is over.

Tokens are spent by size as well as by count: an event costs one token per
started :data:`EVENT_UNIT` bytes of its encoded size (at least one), so a node
sending huge events gets no more bytes stored than one sending full recording
chunks: at most ``EVENT_UNIT`` bytes per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_RATE",
    "EVENT_UNIT",
    "MAX_RETRY_AFTER",
    "MAX_STRIKES",
    "AuditQuotas",
    "Grant",
    "QuotaConfig",
    "TokenBucket",
    "event_cost",
]

#: Sustained events per minute per node (100/s): several interactive sessions
#: (one ``session.data`` chunk a second each while output flows) with room to spare.
DEFAULT_RATE = 6000.0
#: Events a node may send at once: a day-long offline backlog of a busy device,
#: or the 100,000-event drain of ``bench/audit.py``, goes through unthrottled.
DEFAULT_BURST = 200_000
#: Longest retry-after the hub asks for: below the 60 s ack timeout of agents that
#: do not understand refusals, so their resend is never early.
MAX_RETRY_AFTER = 30.0
MIN_RETRY_AFTER = 0.5
#: Early batches in a row after which the node's audit channel is closed.
MAX_STRIKES = 3
#: Grace for a batch that arrives a little before the retry-after (network jitter).
EARLY_SLACK = 1.0
#: Bytes of an event's encoded size one token pays for: a recording chunk of 64 KiB
#: of output (the largest, incompressible, ~66 KiB with its framing) costs one.
EVENT_UNIT = 128 * 1024
#: Buckets kept before full ones are forgotten (a full bucket is the default state).
PRUNE_ABOVE = 4096
#: ... at most this often (seconds), so a fleet of many nodes does not prune per batch
PRUNE_EVERY = 60.0


def event_cost(size: int) -> int:
    """Tokens an event of ``size`` encoded bytes costs: one per started :data:`EVENT_UNIT`."""
    return max(1, -(-size // EVENT_UNIT))


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    #: events per minute refilled; 0 turns the quota off
    rate_per_minute: float = DEFAULT_RATE
    #: bucket size: events a node may send at once after being quiet
    burst: int = DEFAULT_BURST

    def __post_init__(self) -> None:
        if not self.rate_per_minute >= 0:  # also refuses NaN
            raise ValueError("the audit rate must be >= 0 events per minute (0: no quota)")
        if self.burst < 1:
            raise ValueError("the audit burst must be >= 1 event")

    @property
    def enabled(self) -> bool:
        return self.rate_per_minute > 0


@dataclass(frozen=True, slots=True)
class Grant:
    """What to do with a batch: store its first ``accepted`` events, refuse the rest."""

    accepted: int
    #: seconds the node must wait before sending again; None when nothing was refused
    retry_after: float | None = None
    #: the batch came before the previous retry-after: refused unread
    early: bool = False
    #: the node kept ignoring retry-afters: close its audit channel
    close: bool = False


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; starts full."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def take(self, n: int, now: float) -> int:
        """Take up to ``n`` whole tokens; return how many were taken."""
        self.refill(now)
        taken = max(0, min(n, int(self.tokens)))
        self.tokens -= taken
        return taken

    def take_each(self, costs: Sequence[int], now: float) -> int:
        """Take the costs of the first events that fit, in order; return how many fit.

        A cost above the burst counts as the burst: such an event goes through once
        the bucket is full again instead of never.
        """
        self.refill(now)
        accepted = 0
        for cost in costs:
            cost = min(max(1, cost), self.burst)
            if cost > self.tokens:
                break
            self.tokens -= cost
            accepted += 1
        return accepted

    def wait_for(self, n: int) -> float:
        """Seconds until ``n`` tokens (at most ``burst``) are back, from the last refill."""
        missing = min(n, self.burst) - self.tokens
        return max(0.0, missing / self.rate)

    def full(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= self.burst


@dataclass
class _Node:
    bucket: TokenBucket
    not_before: float = 0.0
    strikes: int = 0


@dataclass
class AuditQuotas:
    """The per-node buckets of one hub (node ids are authenticated: at most one per node)."""

    config: QuotaConfig = field(default_factory=QuotaConfig)
    _nodes: dict[str, _Node] = field(default_factory=dict)
    _pruned_at: float | None = None

    def early(self, node_id: str, now: float) -> Grant | None:
        """A refusal if ``node_id`` sends before the retry-after it was given, else None.

        Ask before reading the batch: an early one is refused unread.
        """
        node = self._nodes.get(node_id) if self.config.enabled else None
        if node is None or now >= node.not_before - EARLY_SLACK:
            return None
        node.strikes += 1
        wait = max(MIN_RETRY_AFTER, node.not_before - now)
        return Grant(0, wait, early=True, close=node.strikes >= MAX_STRIKES)

    def take(
        self, node_id: str, count: int, now: float, costs: Sequence[int] | None = None
    ) -> Grant:
        """Decide on a batch of ``count`` events from ``node_id`` (not early) at ``now``.

        ``costs``: each event's tokens (:func:`event_cost`); one each when not given.
        """
        if not self.config.enabled:
            return Grant(count)
        node = self._node(node_id, now)
        node.strikes = 0
        if costs is None:
            accepted = node.bucket.take(count, now)
            missing = count - accepted
        else:
            accepted = node.bucket.take_each(costs, now)
            missing = sum(min(max(1, c), self.config.burst) for c in costs[accepted:])
        if accepted == count:
            return Grant(count)
        wait = min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, node.bucket.wait_for(missing)))
        node.not_before = now + wait
        return Grant(accepted, wait)

    def blocked(self, node_id: str, now: float) -> float | None:
        """Seconds the node's audit channel stays refused (it ignored retry-afters), or None."""
        node = self._nodes.get(node_id)
        if node is None or node.strikes < MAX_STRIKES or now >= node.not_before:
            return None
        return node.not_before - now

    def __len__(self) -> int:
        return len(self._nodes)

    def _node(self, node_id: str, now: float) -> _Node:
        node = self._nodes.get(node_id)
        if node is None:
            if len(self._nodes) >= PRUNE_ABOVE and (
                self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY
            ):
                self._pruned_at = now
                self._prune(now)
            rate = self.config.rate_per_minute / 60.0
            node = self._nodes[node_id] = _Node(TokenBucket(rate, self.config.burst, now))
        return node

    def _prune(self, now: float) -> None:
        """Forget nodes whose bucket is full again and that owe no wait: as if never seen."""
        for node_id in [
            k for k, n in self._nodes.items() if n.bucket.full(now) and now >= n.not_before
        ]:
            del self._nodes[node_id]
