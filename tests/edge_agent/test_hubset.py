"""Where the agent's tunnels dial (edge_agent/hubset.py), with no sockets and no clock:
scenarios first, then random sequences of lists, dial results and drops checked
against a model of what each slot holds."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from edge_agent.hubset import FAILED_AVOID, HELD_AVOID, HubSet, SlotState
from remoteler.hublist import HubList

LB = "lb.example:3080"
A, B, C = ("hub-a", "a:3080"), ("hub-b", "b:3080"), ("hub-c", "c:3080")


def hubs(sender: str, *entries: tuple[str, str], count: int = 2) -> HubList:
    return HubList.build(sender, entries, count)


def test_before_any_list_one_tunnel_to_the_bootstrap_address() -> None:
    hs = HubSet(LB)
    assert hs.wanted() == 1
    assert hs.pick(0, 0.0, random.Random(1)) == LB
    assert hs.state(0) is SlotState.DIALLING and hs.addr_of(0) == LB
    hs.up(0)
    assert hs.state(0) is SlotState.UP and hs.hub_of(0) is None


def test_a_list_sends_the_second_slot_to_the_other_hub() -> None:
    hs = HubSet(LB)
    rng = random.Random(1)
    hs.pick(0, 0.0, rng)
    hs.up(0)
    hs.learnt(0, hubs("hub-a", A, B, count=2))
    assert hs.hub_of(0) == "hub-a" and hs.wanted() == 2
    assert hs.free(1, 0.0) == [B]
    assert hs.pick(1, 0.0, rng) == "b:3080"
    # slot 0 redials after a drop: through the balancer it was given (--hub) ...
    hs.down(0, 1.0)
    assert hs.pick(0, 1.0, rng) == LB
    # ... unless that address failed: then the free listed hub
    hs.dial_failed(0, 1.0)
    assert hs.pick(0, 1.5, rng) == "a:3080"


def test_wanted_is_the_count_but_no_more_than_the_hubs_listed() -> None:
    hs = HubSet(LB)
    hs.learnt(0, hubs("hub-a", A, count=3))
    assert hs.wanted() == 1  # one hub: a second tunnel to it would only evict the first
    hs.learnt(0, hubs("hub-a", A, B, C, count=3))
    assert hs.wanted() == 3
    hs.learnt(0, hubs("hub-a", A, B, C, count=1))
    assert hs.wanted() == 1


def test_a_failed_dial_avoids_that_address_for_a_while() -> None:
    hs = HubSet(LB)
    rng = random.Random(3)
    hs.learnt(0, hubs("hub-a", A, B, count=1))
    assert hs.pick(0, 0.0, rng) == LB  # slot 0 keeps to --hub while it works
    hs.dial_failed(0, 0.0)
    first = hs.pick(0, 1.0, rng)  # then a listed hub of the cluster
    hs.dial_failed(0, 1.0)
    second = hs.pick(0, 2.0, rng)
    assert {first, second} == {"a:3080", "b:3080"}
    hs.dial_failed(0, 2.0)
    assert hs.pick(0, 3.0, rng) == LB  # all avoided: the bootstrap address
    hs.dial_failed(0, 3.0)
    assert hs.pick(0, FAILED_AVOID + 1.5, rng) == first  # LB still avoided, first's over


def test_goaway_with_retry_after_avoids_the_hub_by_id_and_address() -> None:
    hs = HubSet(LB)
    rng = random.Random(0)
    hs.pick(0, 0.0, rng)  # through the load balancer
    hs.up(0)
    hs.learnt(0, hubs("hub-a", A, B, count=1))
    hs.down(0, 10.0, retry_after=30.0)  # hub-a drains
    assert hs.free(0, 10.0) == [B]
    assert hs.pick(0, 10.0, rng) == "b:3080"
    hs.dial_failed(0, 11.0)
    assert hs.pick(0, 12.0, rng) == LB  # nowhere else: the caller obeys retry_after
    hs.dial_failed(0, 12.0)
    assert hs.free(0, 39.0) == []
    assert hs.free(0, 40.5) == [A]  # hub-a's 30 s are over (hub-b's failure not yet)


def test_a_slot_on_the_same_hub_as_an_earlier_one_is_the_duplicate() -> None:
    hs = HubSet(LB)
    rng = random.Random(0)
    for slot in (0, 1):
        assert hs.pick(slot, 0.0, rng) == LB  # no list yet: both through the balancer
        hs.up(slot)
    listed = hubs("hub-a", A, B, count=2)
    hs.learnt(1, listed)  # slot 1's list arrives first
    assert not hs.duplicate(1)
    hs.learnt(0, listed)  # slot 0 came up first: it keeps hub-a
    assert not hs.duplicate(0) and hs.duplicate(1)
    hs.down(1, 1.0)
    assert hs.pick(1, 1.0, rng) == "b:3080"
    hs.up(1)
    hs.learnt(1, hubs("hub-b", A, B, count=2))
    assert not hs.duplicate(0) and not hs.duplicate(1)


def test_no_fallback_to_the_bootstrap_while_another_slot_is_up() -> None:
    """The bootstrap (a balancer) may land on the hub another slot holds: the hub
    refuses that tunnel, or replaces the sibling's. An extra slot with no free
    listed hub waits instead."""
    hs = HubSet(LB)
    rng = random.Random(0)
    assert hs.pick(0, 0.0, rng) == LB
    hs.up(0)
    hs.learnt(0, hubs("hub-a", A, B, count=2))
    assert hs.pick(1, 0.0, rng) == "b:3080"
    hs.dial_failed(1, 0.0)  # hub-b unreachable, still listed (its lease runs)
    assert not hs.may_fall_back(1)
    assert hs.pick(1, 1.0, rng) is None
    assert hs.state(1) is SlotState.IDLE and hs.addr_of(1) is None
    assert hs.free(0, 1.0) == [A]  # the idle slot holds nothing
    assert hs.pick(1, FAILED_AVOID + 0.5, rng) == "b:3080"  # hub-b's time is over
    # with no other slot up, a slot may fall back: a tunnel anywhere beats none
    hs.dial_failed(1, 31.0)
    hs.down(0, 31.0)
    assert hs.may_fall_back(0) and hs.may_fall_back(1)
    assert hs.pick(0, 31.0, rng) == LB  # slot 0 keeps to --hub
    assert hs.pick(1, 31.0, rng) == "a:3080"  # hub-b avoided, hub-a free


def test_workers_behind_one_address_are_reached_by_dialling_it_again() -> None:
    """``hub start --workers``: every listed hub has the shared port; the kernel
    picks the worker. Dialling it again is the only way to another worker."""
    shared = "hub.example:3080"
    w1, w2 = ("w-1", shared), ("w-2", shared)
    hs = HubSet(LB)
    rng = random.Random(0)
    hs.pick(0, 0.0, rng)
    hs.up(0)
    hs.learnt(0, hubs("w-1", w1, w2, count=2))
    assert hs.shared_addr() == shared
    assert hs.pick(1, 0.0, rng) == shared  # listed, and not held (slot 0 came by LB)
    hs.dial_held(1, 0.0)  # landed on w-1, whose tunnel carries a session: 409
    assert hs.free(1, 1.0) == []  # held by no one, but avoided
    assert hs.may_fall_back(1)
    assert hs.pick(1, 1.0, rng) == LB  # the shared port is avoided: through the balancer
    hs.up(1)
    hs.learnt(1, hubs("w-2", w1, w2, count=2))
    assert not hs.duplicate(0) and not hs.duplicate(1)
    # slot 0 redials while slot 1 is up: through --hub, as always while it works
    hs.down(0, 2.0)
    assert hs.pick(0, HELD_AVOID + 1.0, rng) == LB


def test_a_held_hub_is_avoided_like_a_failed_one() -> None:
    hs = HubSet(LB)
    rng = random.Random(2)
    hs.learnt(0, hubs("hub-a", A, B, count=1))
    first = hs.pick(0, 0.0, rng)
    hs.dial_held(0, 0.0)
    assert hs.state(0) is SlotState.IDLE
    assert {a for _, a in hs.free(0, 1.0)} == {"a:3080", "b:3080"} - {first}
    assert len(hs.free(0, HELD_AVOID + 0.5)) == 2


def test_a_removed_slot_holds_nothing() -> None:
    hs = HubSet(LB)
    rng = random.Random(0)
    hs.learnt(0, hubs("hub-a", A, B, count=2))
    hs.pick(1, 0.0, rng)
    hs.remove(1)
    assert hs.state(1) is SlotState.IDLE
    assert hs.free(0, 0.0) == [A, B]


def test_misuse_is_an_error() -> None:
    hs = HubSet(LB)
    with pytest.raises(RuntimeError, match="slot 0 is idle"):
        hs.up(0)
    hs.pick(0, 0.0, random.Random(0))
    hs.up(0)
    with pytest.raises(RuntimeError, match="not dialling"):
        hs.dial_failed(0, 0.0)


# -- random sequences ---------------------------------------------------------------

POOL = [(f"hub-{i}", f"h{i}.example:3080") for i in range(6)]
WORKERS = "workers.example:3080"


@dataclass
class Model:
    """What the test believes each slot is doing."""

    addr: dict[int, str] = field(default_factory=dict)  # dialling or up
    up: dict[int, int] = field(default_factory=dict)  # slot -> order it came up in
    hub: dict[int, str] = field(default_factory=dict)  # slot -> hub id learnt
    avoid: dict[str, float] = field(default_factory=dict)
    listed: HubList | None = None
    ups: int = 0

    def held(self, slot: int) -> tuple[set[str], set[str]]:
        others = [s for s in self.addr if s != slot]
        return {self.addr[s] for s in others}, {self.hub[s] for s in others if s in self.hub}

    def fallback(self, slot: int, now: float, bootstrap: str) -> str | None:
        """Where a slot with no free listed hub dials (None: nowhere)."""
        addrs = {a for _, a in self.listed.hubs} if self.listed is not None else set()
        shared = next(iter(addrs)) if len(addrs) == 1 else None
        others_up = any(s != slot for s in self.up)
        if self.listed is not None and others_up and shared is None:
            return None
        if shared is not None and self.avoid.get("addr:" + shared, -1) <= now:
            return shared
        return bootstrap

    def free(self, slot: int, now: float) -> list[tuple[str, str]]:
        if self.listed is None:
            return []
        addrs, ids = self.held(slot)
        return [
            (i, a)
            for i, a in self.listed.hubs
            if a not in addrs
            and i not in ids
            and self.avoid.get("addr:" + a, -1) <= now
            and self.avoid.get("id:" + i, -1) <= now
        ]


def check(hs: HubSet, model: Model, slots: int, now: float) -> None:
    assert 1 <= hs.wanted() <= 8
    if model.listed is not None:
        assert hs.wanted() <= len(model.listed.hubs)
    for slot in range(slots):
        expected = (
            SlotState.UP
            if slot in model.up
            else SlotState.DIALLING
            if slot in model.addr
            else SlotState.IDLE
        )
        assert hs.state(slot) is expected
        assert hs.addr_of(slot) == model.addr.get(slot)
        assert hs.hub_of(slot) == (model.hub.get(slot) if slot in model.up else None)
        assert hs.free(slot, now) == model.free(slot, now)
    # exactly one slot keeps each hub: the one that came up first
    by_hub: dict[str, list[int]] = {}
    for slot, hub_id in model.hub.items():
        by_hub.setdefault(hub_id, []).append(slot)
    for holders in by_hub.values():
        keeper = min(holders, key=lambda s: model.up[s])
        for slot in holders:
            assert hs.duplicate(slot) == (slot != keeper)


@pytest.mark.parametrize("seed", range(300))
def test_random_sequences(seed: int) -> None:
    rng = random.Random(seed)
    slots = rng.randint(1, 8)
    bootstrap = rng.choice([LB, POOL[0][1]])  # a balancer, or one hub's own address
    hs, model = HubSet(bootstrap), Model()
    now = 0.0
    for _ in range(120):
        now += rng.choice([0.0, 0.5, 5.0, 40.0])
        slot = rng.randrange(slots)
        action = rng.random()
        if slot not in model.addr and action < 0.5:
            free_before = model.free(slot, now)
            addr = hs.pick(slot, now, rng)
            bootstrap_ok = model.avoid.get("addr:" + bootstrap, -1) <= now
            cluster = model.listed is not None and len(model.listed.hubs) >= 2
            if slot == 0 and (bootstrap_ok or not (free_before and cluster)):
                # slot 0 keeps to --hub unless it is avoided and a cluster has room
                assert addr == bootstrap
            elif free_before:
                assert addr in {a for _, a in free_before}  # never a held or avoided hub
            else:  # the bootstrap only where it cannot evict a sibling for nothing
                assert addr == model.fallback(slot, now, bootstrap)
            if model.listed is None:
                assert addr == bootstrap
            if addr is not None:
                model.addr[slot] = addr
        elif slot in model.addr and slot not in model.up:
            if action < 0.6:
                hs.up(slot)
                model.ups += 1
                model.up[slot] = model.ups
            else:
                held = action > 0.8  # the hub refused: another tunnel there has sessions
                if held:
                    hs.dial_held(slot, now)
                else:
                    hs.dial_failed(slot, now)
                key = "addr:" + model.addr.pop(slot)
                until = now + (HELD_AVOID if held else FAILED_AVOID)
                model.avoid[key] = max(model.avoid.get(key, 0), until)
        elif slot in model.up and action < 0.4:
            if rng.random() < 0.2:  # hub start --workers: every worker on one port
                entries = [(f"w-{i}", WORKERS) for i in range(rng.randint(1, 4))]
            else:
                entries = rng.sample(POOL, rng.randint(1, len(POOL)))
            addr = model.addr[slot]
            # the hub it is on: the one at that address, else (a balancer) any
            on = next((e for e in entries if e[1] == addr), None) or rng.choice(entries)
            listed = HubList.build(on[0], entries, rng.randint(1, 8))
            hs.learnt(slot, listed)
            model.listed, model.hub[slot] = listed, on[0]
        elif slot in model.up and action < 0.8:
            retry_after = rng.choice([None, None, 0.0, 10.0, 120.0])
            hs.down(slot, now, retry_after)
            if retry_after:
                for key in ("addr:" + model.addr[slot], "id:" + model.hub.get(slot, "")):
                    if key != "id:":
                        model.avoid[key] = max(model.avoid.get(key, 0), now + retry_after)
            model.addr.pop(slot)
            model.up.pop(slot)
            model.hub.pop(slot, None)
        elif action > 0.95:
            hs.remove(slot)
            model.addr.pop(slot, None)
            model.up.pop(slot, None)
            model.hub.pop(slot, None)
        check(hs, model, slots, now)
