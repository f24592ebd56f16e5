"""The hub's collector policy: survivors of a full collection are frozen, and the
maintenance collection still frees cycles among them."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from hub.gcpolicy import GcPolicy


class Node:
    def __init__(self) -> None:
        self.peer: Node | None = None


@pytest.fixture
def policy() -> Iterator[GcPolicy]:
    p = GcPolicy(interval=3600)
    yield p
    p.uninstall()


async def test_survivors_of_a_full_collection_are_frozen(policy: GcPolicy) -> None:
    policy.install()
    frozen = gc.get_freeze_count()
    assert frozen > 0  # start-up objects
    keep = [Node() for _ in range(1000)]
    gc.collect(2)  # as the collector would on its own
    assert policy.frozen_after_full == 1
    assert gc.get_freeze_count() >= frozen + len(keep)
    gc.collect(1)  # a young collection freezes nothing
    await asyncio.sleep(0)
    assert policy.frozen_after_full == 1


async def test_maintenance_frees_cycles_that_died_frozen(policy: GcPolicy) -> None:
    policy.install()
    a, b = Node(), Node()
    a.peer, b.peer = b, a
    ref = weakref.ref(a)
    gc.freeze()  # alive through a full collection: frozen, as the policy does
    del a, b
    gc.collect()
    assert ref() is not None  # unreachable now, but frozen objects are not walked
    pause = policy.maintain()
    assert ref() is None
    assert pause == policy.last_pause > 0
    assert gc.get_freeze_count() > 0  # the survivors are frozen again


async def test_uninstall_unfreezes_and_stops_freezing(policy: GcPolicy) -> None:
    policy.install()
    policy.uninstall()
    assert gc.get_freeze_count() == 0
    gc.collect(2)
    await asyncio.sleep(0)
    assert policy.frozen_after_full == 0


async def test_maintenance_is_not_counted_as_an_automatic_full_collection(
    policy: GcPolicy,
) -> None:
    policy.install()
    policy.maintain()
    assert policy.frozen_after_full == 0


async def test_collections_in_other_threads_freeze_too(policy: GcPolicy) -> None:
    policy.install()
    await asyncio.to_thread(gc.collect, 2)  # aiosqlite's and the pool's threads
    assert policy.frozen_after_full == 1


async def test_uninstall_without_install_leaves_other_freezes_alone(policy: GcPolicy) -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        policy.uninstall()  # as the hub does at shutdown with --gc-interval 0
        assert gc.get_freeze_count() == frozen > 0
    finally:
        gc.unfreeze()
