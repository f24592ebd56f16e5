"""The per-node audit quota, sans-I/O: a token bucket per node, time passed in."""

from __future__ import annotations

import pytest

from edge_agent.forwarder import retry_delay
from hub.audit.quota import (
    EVENT_UNIT,
    MAX_RETRY_AFTER,
    MAX_STRIKES,
    PRUNE_ABOVE,
    AuditQuotas,
    Grant,
    QuotaConfig,
    event_cost,
)
from remoteler.audit.stream import ack_message, parse_reply, refused_message


def test_burst_then_rate_with_partial_grants() -> None:
    quotas = AuditQuotas(QuotaConfig(rate_per_minute=600, burst=100))  # 10/s
    assert quotas.take("n", 60, 0.0) == Grant(60)
    grant = quotas.take("n", 60, 0.0)  # 40 left in the bucket
    assert grant.accepted == 40
    assert grant.retry_after == pytest.approx(2.0)  # 20 refused at 10/s
    assert quotas.take("other", 100, 0.0) == Grant(100)  # per node
    assert quotas.early("n", 2.0) is None  # on time
    assert quotas.take("n", 20, 2.0) == Grant(20)
    assert quotas.take("n", 1, 2.0).accepted == 0
    assert quotas.take("n", 1000, 12.0).accepted == 100  # refilled to the burst, not past it


def test_retry_after_is_bounded_below_old_agents_ack_timeout() -> None:
    quotas = AuditQuotas(QuotaConfig(rate_per_minute=1, burst=500))
    quotas.take("n", 500, 0.0)
    grant = quotas.take("n", 500, 0.0)
    assert grant.accepted == 0 and grant.retry_after == MAX_RETRY_AFTER < 60
    assert QuotaConfig().rate_per_minute == 6000 and QuotaConfig().burst == 200_000


def test_early_batches_are_refused_then_the_channel_is_closed() -> None:
    quotas = AuditQuotas(QuotaConfig(rate_per_minute=60, burst=10))
    assert quotas.take("n", 30, 0.0).retry_after == pytest.approx(10.0)
    for strike in range(1, MAX_STRIKES + 1):
        early = quotas.early("n", 1.0)
        assert early is not None and early.early and early.accepted == 0
        assert early.retry_after == pytest.approx(9.0)
        assert early.close == (strike == MAX_STRIKES)
    assert quotas.blocked("n", 5.0) == pytest.approx(5.0)
    assert quotas.blocked("n", 10.0) is None  # over once the retry-after is
    assert quotas.early("n", 9.5) is None  # within the slack: not early
    assert quotas.take("n", 5, 9.5).accepted == 5
    assert quotas.blocked("n", 9.6) is None  # strikes reset by an on-time batch


def test_off_and_config_errors() -> None:
    quotas = AuditQuotas(QuotaConfig(rate_per_minute=0))
    assert quotas.take("n", 10**9, 0.0) == Grant(10**9)
    assert quotas.early("n", 0.0) is None and len(quotas) == 0
    with pytest.raises(ValueError):
        QuotaConfig(rate_per_minute=float("nan"))
    with pytest.raises(ValueError):
        QuotaConfig(burst=0)


def test_full_buckets_are_forgotten() -> None:
    quotas = AuditQuotas(QuotaConfig(rate_per_minute=60, burst=10))
    for i in range(PRUNE_ABOVE):
        quotas.take(f"n{i}", 1, 0.0)
    quotas.take("busy", 10, 100.0)
    quotas.take("late", 1, 100.0)  # the others are full again by now: pruned
    assert len(quotas) == 2


def test_reply_codec_and_agent_delay() -> None:
    assert parse_reply(ack_message(["a"])).retry_after is None
    partial = parse_reply(ack_message(["a"], 2.5))
    assert (partial.ids, partial.retry_after) == (["a"], 2.5)
    refused = parse_reply(refused_message(4.0, "quota"))
    assert (refused.ids, refused.retry_after, refused.code) == ([], 4.0, 1)
    assert parse_reply({"t": "refused"}).retry_after == 30.0
    assert parse_reply({"t": "refused", "retry_after": 1e9}).retry_after == 3600.0
    with pytest.raises(ValueError):
        parse_reply({"t": "refused", "retry_after": "soon"})
    assert retry_delay(10.0, 0.0) == 10.0
    assert retry_delay(10.0, 0.999) == pytest.approx(12.0, abs=0.01)
    assert retry_delay(0.0, 0.5) == pytest.approx(0.05)


def test_events_cost_by_size() -> None:
    """A node sending huge events gets no more bytes stored than one per token's unit."""
    assert [event_cost(n) for n in (0, 200, EVENT_UNIT, EVENT_UNIT + 1)] == [1, 1, 1, 2]
    assert event_cost(1 << 20) == 8
    quotas = AuditQuotas(QuotaConfig(rate_per_minute=60, burst=20))  # 1 token/s
    grant = quotas.take("n", 5, 0.0, [8, 8, 8, 1, 1])
    assert grant.accepted == 2  # 16 of 20 tokens: the third event (8) does not fit
    assert grant.retry_after == pytest.approx(6.0)  # 10 tokens missing, 4 held
    # An event costlier than the whole burst goes through once the bucket is full again.
    small = AuditQuotas(QuotaConfig(rate_per_minute=60, burst=4))
    assert small.take("n", 1, 0.0, [32]) == Grant(1)
    grant = small.take("n", 1, 0.0, [32])
    assert grant.accepted == 0 and grant.retry_after == pytest.approx(4.0)
    assert small.take("n", 1, 4.0, [32]) == Grant(1)
