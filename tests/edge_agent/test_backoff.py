from __future__ import annotations

import random

from edge_agent.tunnel_slots import HELD_WAIT_MAX, Backoff


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


def test_stable_tunnel_resets_the_attempt_counter() -> None:
    backoff, rng = Backoff(base=1.0, cap=60.0, stable_after=30.0), random.Random(3)
    delay, attempt = backoff.next_wait(9, uptime=1.0, retry_after=None, rng=rng)
    assert attempt == 10 and 0 <= delay <= 60
    delay, attempt = backoff.next_wait(9, uptime=30.0, retry_after=None, rng=rng)
    assert attempt == 1 and 0 <= delay <= 1.0


def test_hub_retry_after_replaces_the_backoff_and_is_not_a_failure() -> None:
    backoff, rng = Backoff(base=1.0, cap=60.0, stable_after=30.0), random.Random(5)
    for _ in range(100):
        delay, attempt = backoff.next_wait(4, uptime=2.0, retry_after=20.0, rng=rng)
        assert attempt == 4  # not counted as a failed attempt
        assert 20.0 <= delay <= 21.0  # what the hub asked, plus at most base of jitter
    # A stable tunnel drained by the hub still resets the counter.
    assert backoff.next_wait(4, uptime=3600.0, retry_after=20.0, rng=rng)[1] == 0
    # Zero means now; an hour is capped at twice the backoff cap.
    assert backoff.next_wait(0, uptime=0.0, retry_after=0.0, rng=rng)[0] == 0.0
    assert 120.0 <= backoff.next_wait(0, 0.0, 3600.0, rng)[0] <= 121.0


def test_a_held_hub_is_tried_again_within_a_bound_never_at_once() -> None:
    """A 409 (another tunnel of this node there carries sessions) grows its own wait,
    up to HELD_WAIT_MAX (or the cap), never to the failure backoff's cap."""
    rng = random.Random(11)
    backoff = Backoff(base=1.0, cap=60.0)
    waits = [backoff.held_wait(held, rng) for held in range(40)]
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0
    assert all(HELD_WAIT_MAX / 2 <= w <= HELD_WAIT_MAX for w in waits[10:])
    assert all(2.5 <= Backoff(cap=5).held_wait(held, rng) <= 5 for held in range(3, 100))
