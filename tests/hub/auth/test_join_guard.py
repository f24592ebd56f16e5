"""Join guessing (issue #14 A6): rate limits on joins per address and hub-wide, and a
``join.failed`` audit event per refusal, against a real hub on loopback."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import pytest
from hubkit import Hub, new_key_line, running_hub
from websockets.asyncio.client import connect

from hub.audit.budget import AuditBudget, AuditBudgetPolicy
from hub.auth import secrets as hs
from hub.auth.joinguard import JoinGuard, JoinPolicy, JoinRefused
from hub.storage.api import AuditQuery
from remoteler import rpc
from remoteler.errors import RemotelerError

GUESSES = 200


async def _joins(hub: Hub, source: str, calls: list[dict[str, Any]]) -> list[str]:
    """Join RPCs from the source address ``source``, 50 to a connection (the hub takes
    100); each answer's error message, or "ok"."""
    out: list[str] = []
    for first in range(0, len(calls), 50):
        async with connect(
            hub.url("/v1/rpc"),
            ssl=hub.tls(),
            compression=None,
            subprotocols=[rpc.SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=10,
            close_timeout=1,
            local_addr=(source, 0),
        ) as ws:
            client = rpc.RpcClient(ws)
            for params in calls[first : first + 50]:
                try:
                    await asyncio.wait_for(client.call("join", **params), 10)
                    out.append("ok")
                except RemotelerError as err:
                    out.append(str(err))
    return out


def _join(token: str, name: str) -> dict[str, Any]:
    return {"token": token, "name": name, "public_key": new_key_line()[1], "labels": {}}


async def test_join_guessing_is_limited_and_audited_and_a_real_join_still_works(
    tmp_path: Path,
) -> None:
    async with running_hub(tmp_path, audit=True) as hub:
        store = hub.server.audit
        assert store is hub.storage.audit
        hub.auth.audit = store
        hub.auth.join_refusals = AuditBudget(AuditBudgetPolicy(burst=GUESSES))
        guesses = [secrets.token_hex(16) for _ in range(GUESSES)]
        answers = await _joins(hub, "127.3.0.1", [_join(t, "truck-1") for t in guesses])

        limited = [a for a in answers if "too many failed joins from your address" in a]
        wrong = [a for a in answers if a.startswith("join token not recognised")]
        assert len(limited) + len(wrong) == GUESSES, set(answers)
        assert len(wrong) == JoinPolicy().address_failures, "failures are limited strictly"
        assert "try again in" in limited[0] and "tctl tokens add" in limited[0]

        token, _ = await hub.auth.add_token("node", 600, {})
        assert await _joins(hub, "127.3.0.2", [_join(token, "truck-1")]) == ["ok"]

        events = await store.search(AuditQuery(type="join.failed", limit=1000))
        assert len(events) == GUESSES, "every refusal is audited (within the budget)"
        assert {e.fields["remote_addr"] for e in events} == {"127.3.0.1"}
        assert {e.fields["name"] for e in events} == {"truck-1"}
        reasons = [e.fields["reason"] for e in events]
        assert reasons.count("join token not recognised") == len(wrong)
        assert reasons.count("address failures") == len(limited)
        dumped = repr([e.to_wire() for e in events])
        assert not any(t in dumped for t in guesses), "a token tried is never in the audit"
        assert events[0].fields["token_id"] == hs.hash_token(guesses[0])[:12]
        assert len(await store.search(AuditQuery(type="join"))) == 1


async def test_valid_joins_from_one_address_are_not_limited_like_failures() -> None:
    """A fleet provisioned from one address (a factory, the test suite): successes give
    their reserved failure back, and only the loose attempt limit applies to them."""
    guard = JoinGuard(JoinPolicy(address_failures=3, address_attempts=50))
    for _ in range(2):  # two typos
        guard.check("10.0.0.1", 0.0)
    for _ in range(40):
        guard.check("10.0.0.1", 0.0)
        guard.succeeded("10.0.0.1", 0.0)
    guard.check("10.0.0.1", 0.0)  # a third failure is still allowed
    with pytest.raises(JoinRefused, match="too many failed joins from your address") as info:
        guard.check("10.0.0.1", 0.0)
    assert info.value.reason == "address failures"
    guard.check("10.0.0.1", 200.0)  # one failure refilled after period/3


async def test_attempts_per_address_and_failures_hub_wide() -> None:
    guard = JoinGuard(JoinPolicy(address_attempts=5, global_failures=8, address_failures=100))
    for _ in range(5):
        guard.check("10.0.0.1", 0.0)
        guard.succeeded("10.0.0.1", 0.0)
    with pytest.raises(JoinRefused, match="too many join attempts from your address") as info:
        guard.check("10.0.0.1", 0.0)
    assert info.value.reason == "address rate limited"
    for i in range(8):  # eight failures from eight addresses
        assert guard.check(f"10.0.1.{i}", 0.0)
    assert not guard.check("10.0.2.1", 0.0), "the hub-wide bucket is empty"
    refused = guard.refusal(0.0)
    assert "too many failed joins at the hub" in str(refused)
    assert refused.reason == "hub failures"
    guard.succeeded("10.0.2.1", 0.0, hub_reserved=False)  # a valid token: nothing to return
    assert not guard.check("10.0.2.2", 0.0), "a valid token gave back no hub-wide failure"


async def test_guesses_from_many_addresses_do_not_hold_up_a_real_join(tmp_path: Path) -> None:
    """The hub-wide failure bucket, emptied by wrong tokens from many addresses (cheap
    with IPv6), refuses wrong tokens only: a device with a valid token still joins."""
    async with running_hub(tmp_path) as hub:
        hub.auth.join_guard = JoinGuard(JoinPolicy(global_failures=6))
        guesses = [
            _joins(hub, f"127.3.1.{i}", [_join(secrets.token_hex(16), "truck-1")] * 2)
            for i in range(1, 6)
        ]
        answers = [a for batch in await asyncio.gather(*guesses) for a in batch]
        hub_wide = [a for a in answers if "too many failed joins at the hub" in a]
        assert len(hub_wide) == 4, answers  # 10 guesses, 6 judged, then the hub-wide limit
        assert (
            "too many failed joins at the hub"
            in (await _joins(hub, "127.3.2.1", [_join(secrets.token_hex(16), "truck-1")]))[0]
        )
        token, _ = await hub.auth.add_token("node", 600, {})
        assert await _joins(hub, "127.3.2.2", [_join(token, "truck-2")]) == ["ok"]


async def test_refusals_by_the_limits_are_audited_within_a_budget(tmp_path: Path) -> None:
    """A refusal costs the peer one request: one durable audit row each would let one
    address grow the audit database at request rate (220 a second measured)."""
    async with running_hub(tmp_path, audit=True) as hub:
        store = hub.server.audit
        assert store is hub.storage.audit
        hub.auth.audit = store
        hub.auth.join_refusals = AuditBudget(AuditBudgetPolicy(burst=20, refill=3600.0))
        guesses = [_join(secrets.token_hex(16), "truck-1") for _ in range(GUESSES)]
        answers = await _joins(hub, "127.3.3.1", guesses)
        limited = [a for a in answers if "too many failed joins from your address" in a]
        assert len(limited) == GUESSES - JoinPolicy().address_failures, set(answers)

        events = await store.search(AuditQuery(type="join.failed", limit=1000))
        reasons = [e.fields["reason"] for e in events]
        assert reasons.count("join token not recognised") == JoinPolicy().address_failures
        assert reasons.count("address failures") == 20, f"{len(events)} refusals audited"
        assert hub.auth.join_refusals.suppressed == len(limited) - 20


def test_the_audit_budget_carries_the_count_left_out_into_the_next_event() -> None:
    budget = AuditBudget(AuditBudgetPolicy(burst=2, refill=10.0))
    assert [budget.admit(0.0) for _ in range(5)] == [0, 0, None, None, None]
    assert budget.admit(5.0) is None  # half a refill
    assert budget.admit(10.0) == 4, "the next one audited says how many were left out"
    assert budget.admit(10.0) is None and budget.suppressed == 1


async def test_ipv6_addresses_of_one_64_share_the_address_limits() -> None:
    """The listener counts an IPv6 peer by its /64 (hub.net.admission.source_key): a host
    holds the whole /64, so a new address per guess must not get a new budget."""
    guard = JoinGuard(JoinPolicy(address_failures=3, global_failures=1000))
    for i in range(3):
        guard.check(f"2001:db8:1:2::{i + 1:x}", 0.0)
    with pytest.raises(JoinRefused, match="too many failed joins from your address"):
        guard.check("2001:db8:1:2::ffff", 0.0)
    guard.check("2001:db8:1:3::1", 0.0)  # another /64 has its own
