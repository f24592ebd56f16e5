from __future__ import annotations

import random

from edge_agent.agent import Backoff


def test_full_jitter_stays_within_the_capped_exponential() -> None:
    backoff = Backoff(base=1.0, cap=60.0)
    rng = random.Random(7)
    for attempt in range(40):
        bound = min(60.0, 2.0**attempt)
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(0 <= d <= bound for d in delays)
        # full jitter: spread over the whole range, not clustered at the bound
        assert min(delays) < bound * 0.1 and max(delays) > bound * 0.9


def test_huge_attempt_counts_do_not_overflow() -> None:
    assert 0 <= Backoff(cap=5).delay(10_000, random.Random(1)) <= 5
