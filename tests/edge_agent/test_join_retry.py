"""The first start's join tried again while the hub cannot be reached
(edge_agent/join.py, ``join_until_done``); the real agent against a hub that comes
up late is in tests/e2e/test_join_late_hub.py."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from edge_agent.identity import NodeIdentity
from edge_agent.join import join_until_done
from remoteler.errors import AuthError, HubUnreachable, TrustError, UsageError


class Attempts:
    """Joins that fail with ``errors`` in turn, then succeed (or hang, for ``None``)."""

    def __init__(self, *errors: Exception | None) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.joined = object()

    async def __call__(self) -> NodeIdentity:
        self.calls += 1
        if self.errors:
            err = self.errors.pop(0)
            if err is None:
                await asyncio.sleep(3600)
            raise err  # type: ignore[misc]
        return self.joined  # type: ignore[return-value]


def _no_wait(attempt: int, rng: random.Random) -> float:
    return 0.0


async def test_an_unreachable_hub_is_tried_again_with_one_line_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = Attempts(
        HubUnreachable("cannot reach the hub at h:1: Connection refused"),
        HubUnreachable("timed out connecting to the hub at h:1"),
    )
    waits: list[int] = []

    def delay(attempt: int, rng: random.Random) -> float:
        waits.append(attempt)
        return 0.01

    with caplog.at_level(logging.WARNING, "remoteler.agent.join"):
        ident = await join_until_done(attempts, "h:1", delay)
    assert ident is attempts.joined and attempts.calls == 3
    assert waits == [0, 1]  # the backoff grows with each failed try
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and "Connection refused" in lines[0], lines
    assert all("trying again in 0.0 s" in line for line in lines), lines


@pytest.mark.parametrize(
    "final",
    [
        AuthError("join token was already used; ask the hub operator for a new one"),
        TrustError("CA pin mismatch: the hub presents sha256:aa, expected sha256:bb"),
        UsageError("a node named 'dev' already exists; pick another --name"),
    ],
)
async def test_a_refusal_no_retry_can_change_ends_at_once(final: Exception) -> None:
    attempts = Attempts(HubUnreachable("down"), final)
    with pytest.raises(type(final)):
        await join_until_done(attempts, "h:1", _no_wait)
    assert attempts.calls == 2


async def test_a_hub_that_never_answers_counts_as_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = Attempts(None)
    with caplog.at_level(logging.WARNING, "remoteler.agent.join"):
        ident = await join_until_done(attempts, "h:1", _no_wait, deadline=0.05)
    assert ident is attempts.joined and attempts.calls == 2
    assert "did not finish the join within 0 s" in caplog.records[0].getMessage()
