"""Agent admission by loop lag: the governor's arithmetic, the gate's FIFO, and a
listener whose loop is made to lag letting fewer agents in."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from hubkit import running_hub
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.net.admission import Gate, LagGovernor, source_key
from hub.net.listener import ListenerLimits


def test_governor_starts_at_the_ceiling_and_cuts_by_a_third_once_per_cooldown() -> None:
    gov = LagGovernor(64, target=0.02, cooldown=4)
    assert gov.capacity == 64
    assert gov.observe(0.05) == 42
    for _ in range(3):  # the cut has not shown yet: no second one
        assert gov.observe(0.05) == 42
    assert gov.observe(0.05) == 28
    for _ in range(100):
        gov.observe(1.0)
    assert gov.capacity == gov.floor == 8


def test_governor_grows_by_one_when_calm_and_holds_in_between() -> None:
    gov = LagGovernor(20, floor=2, target=0.02, cooldown=1)
    for _ in range(10):
        gov.observe(1.0)
    assert gov.capacity == 2
    assert gov.observe(0.015) == 2  # between half the target and the target: hold
    assert gov.observe(0.001) == 3
    for _ in range(30):
        gov.observe(0.0)
    assert gov.capacity == 20  # never past the operator's ceiling


def test_governor_leaves_capacity_alone_when_no_agent_waits() -> None:
    # Lag from other work (a large tsh ls, the collector) is not the lane's doing.
    gov = LagGovernor(64, cooldown=1)
    for _ in range(10):
        assert gov.observe(0.5, queued=False) == 64
    assert gov.observe(0.5, queued=True) == 42


def test_governor_floor_never_exceeds_the_ceiling() -> None:
    gov = LagGovernor(1)
    assert gov.floor == 1
    assert gov.observe(5.0) == 1
    with pytest.raises(ValueError):
        LagGovernor(0)


async def test_gate_admits_in_order_and_resizes_while_permits_are_out() -> None:
    gate = Gate(2)
    await gate.acquire()
    await gate.acquire()
    order: list[int] = []

    async def waiter(i: int) -> None:
        await gate.acquire()
        order.append(i)

    tasks = [asyncio.ensure_future(waiter(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert gate.waiting == 3 and order == []
    gate.resize(1)  # shrinking takes no permit back
    gate.release()
    await asyncio.sleep(0)
    assert order == [] and gate.in_use == 1  # 1 out of 1: still full
    gate.resize(3)
    await asyncio.sleep(0)
    assert order == [0, 1] and gate.in_use == 3
    gate.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and gate.in_use == 3


async def test_gate_cancelled_waiters_leak_no_permit() -> None:
    gate = Gate(1)
    await gate.acquire()
    queued = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    queued.cancel()
    await asyncio.gather(queued, return_exceptions=True)
    assert gate.waiting == 0
    # Granted and cancelled in the same turn: the permit passes to the next waiter.
    granted = asyncio.ensure_future(gate.acquire())
    after = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    gate.release()  # grants ``granted``...
    granted.cancel()  # ...which is cancelled before it runs
    await asyncio.gather(granted, return_exceptions=True)
    await asyncio.wait_for(after, 1)
    assert gate.in_use == 1 and gate.waiting == 0


async def test_a_lagging_loop_lets_fewer_agents_in(tmp_path: Path) -> None:
    limits = ListenerLimits(tunnel_handshakes=32, lag_target=0.01, lag_tick=0.02)
    async with running_hub(tmp_path, limits) as hub:
        listener = hub.server.listener
        assert listener is not None
        assert listener.stats()["tunnel_capacity"] == 32
        for _ in range(3):  # lag while no agent waits: not the lane's doing
            time.sleep(0.1)  # the point: the loop is blocked
            await asyncio.sleep(0.03)
        assert listener.stats()["tunnel_capacity"] == 32
        # Agents waiting (their handshakes are what a real storm's lag is made of).
        gate = listener.lanes["tunnel"].gate
        held = [asyncio.ensure_future(gate.acquire()) for _ in range(40)]
        await asyncio.sleep(0)
        assert gate.waiting == 8
        for _ in range(12):
            time.sleep(0.05)
            await asyncio.sleep(0.03)
        assert listener.stats()["tunnel_capacity"] < 32
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        for _ in range(gate.in_use):
            gate.release()
        deadline = time.monotonic() + 10
        while listener.stats()["tunnel_capacity"] < 32:
            assert time.monotonic() < deadline, "capacity did not recover on a calm loop"
            await asyncio.sleep(0.05)


async def test_gate_caps_the_permits_of_each_key() -> None:
    """Per-address accounting: one address holds at most ``per_key`` permits; its
    others wait although permits are free, and other addresses are not behind them."""
    gate = Gate(4, per_key=2)
    await gate.acquire("a")
    await gate.acquire("a")
    third = asyncio.ensure_future(gate.acquire("a"))
    await asyncio.sleep(0)
    assert gate.held("a") == 2 and gate.in_use == 2 and gate.waiting == 1
    await asyncio.wait_for(gate.acquire("b"), 1)
    assert gate.held("b") == 1 and gate.in_use == 3 and not third.done()
    gate.release("a")
    await asyncio.wait_for(third, 1)
    assert gate.held("a") == 2 and gate.in_use == 3 and gate.waiting == 0
    for key in ("a", "a", "b"):
        gate.release(key)
    assert gate.in_use == 0 and gate.held("a") == 0 and gate.held("b") == 0


async def test_gate_serves_keys_in_turn_and_each_key_in_order() -> None:
    gate = Gate(1)
    await gate.acquire("x")
    order: list[str] = []

    async def waiter(name: str) -> None:
        await gate.acquire(name[0])
        order.append(name)
        gate.release(name[0])

    tasks = [asyncio.ensure_future(waiter(n)) for n in ("a1", "a2", "a3", "b1", "c1", "b2")]
    await asyncio.sleep(0)
    assert gate.waiting == 6
    gate.release("x")
    await asyncio.gather(*tasks)
    # The busiest address does not make the others wait behind its whole queue.
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert gate.in_use == 0 and gate.waiting == 0


async def test_gate_cancelled_keyed_waiters_leave_no_trace() -> None:
    gate = Gate(1, per_key=1)
    await gate.acquire("a")
    gone = [asyncio.ensure_future(gate.acquire(k)) for k in ("b", "c")]
    last = asyncio.ensure_future(gate.acquire("d"))
    await asyncio.sleep(0)
    for task in gone:
        task.cancel()
    await asyncio.gather(*gone, return_exceptions=True)
    gate.release("a")  # the stale turns of "b" and "c" are skipped
    await asyncio.wait_for(last, 1)
    assert gate.held("d") == 1 and gate.waiting == 0 and gate.in_use == 1


def test_source_key() -> None:
    assert source_key("127.0.0.2") == "127.0.0.2"
    assert source_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert source_key("2001:db8:1:2:aaaa::1") == source_key("2001:db8:1:2:bbbb::9")
    assert source_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert source_key("fe80::1%eth0") == "fe80::/64"
    assert source_key("not-an-address") == "not-an-address"


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["acquire", "release", "cancel", "resize"]), st.integers(0, 5)),
        max_size=60,
    )
)
def test_gate_invariants_under_any_sequence(ops: list[tuple[str, int]]) -> None:
    """Whatever the order of acquires, releases, cancellations and resizes: no key
    holds more than its cap, permits in use are the sum of those held, every waiter
    is counted, and stale turns stay bounded."""

    async def run() -> None:
        gate = Gate(3, per_key=2)
        granted: list[tuple[str, asyncio.Task[None]]] = []
        pending: list[tuple[str, asyncio.Task[None]]] = []
        for op, n in ops:
            key = f"k{n % 4}"
            if op == "acquire":
                pending.append((key, asyncio.ensure_future(gate.acquire(key))))
            elif op == "release" and granted:
                k, _ = granted.pop(n % len(granted))
                gate.release(k)
            elif op == "cancel" and pending:
                pending.pop(n % len(pending))[1].cancel()
            elif op == "resize":
                gate.resize(n)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            still = []
            for k, task in pending:
                if task.done():
                    if not task.cancelled():
                        granted.append((k, task))
                else:
                    still.append((k, task))
            pending = still
            held = {k: sum(1 for g, _ in granted if g == k) for k, _ in granted}
            assert all(gate.held(k) == n for k, n in held.items())
            assert all(n <= 2 for n in held.values())
            assert gate.in_use == len(granted)
            assert gate.waiting == len(pending)
            assert len(gate._turns) <= 2 * len(gate._queues) + 17
        for _, task in pending:
            task.cancel()
        await asyncio.gather(*(t for _, t in pending), return_exceptions=True)
        for k, _ in granted:
            gate.release(k)
        assert gate.in_use == 0 and gate.waiting == 0

    asyncio.run(run())
