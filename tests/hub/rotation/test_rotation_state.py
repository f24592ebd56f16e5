"""The CA rotation state machine (sans-I/O) and its store over the hub's storage."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.cluster_init import init_cluster
from hub.rotation.state import (
    AUTO_ORDER,
    TRANSITIONS,
    Phase,
    RotationError,
    RotationState,
    due,
    revision,
    transition,
)
from hub.rotation.store import RotationStore
from hub.storage.sqlite import open_sqlite
from remoteler.errors import UsageError

ROLES = {
    Phase.STANDBY: ("current", "current", ("current",)),
    Phase.INIT: ("current", "current", ("current", "next")),
    Phase.UPDATE_CLIENTS: ("next", "current", ("current", "next")),
    Phase.UPDATE_SERVERS: ("next", "next", ("current", "next")),
    Phase.ROLLBACK: ("current", "current", ("current", "next")),
}


def walk(*phases: Phase, now: float = 100.0) -> RotationState:
    state = RotationState()
    for phase in phases:
        state = transition(state, phase, now).state
    return state


def test_full_rotation_promotes_and_counts() -> None:
    state = RotationState()
    effects = []
    for phase in AUTO_ORDER:
        change = transition(state, phase, 1.0)
        effects.append((change.generate_next, change.promote_next, change.discard_next))
        state = change.state
    assert effects[0] == (True, False, False)
    assert effects[-1] == (False, True, False)
    assert state.phase is Phase.STANDBY and state.generation == 1 and state.last == "completed"


def test_rollback_discards_next() -> None:
    state = walk(Phase.INIT, Phase.UPDATE_CLIENTS, Phase.ROLLBACK)
    assert state.signer == "current" and state.trusted == ("current", "next")
    change = transition(state, Phase.STANDBY, 2.0)
    assert change.discard_next and not change.promote_next
    assert change.state.generation == 0 and change.state.last == "rolled back"


@pytest.mark.parametrize("phase", list(Phase))
def test_roles_per_phase(phase: Phase) -> None:
    state = RotationState(phase=phase)
    assert (state.signer, state.server, state.trusted) == ROLES[phase]


def test_refused_transition_names_the_allowed_ones() -> None:
    with pytest.raises(
        RotationError, match="from phase standby to update_servers; next can be init"
    ):
        transition(RotationState(), Phase.UPDATE_SERVERS, 0.0)
    with pytest.raises(RotationError, match="grace period"):
        transition(RotationState(), Phase.INIT, 0.0, mode="auto", grace_period=0)


def test_auto_mode_walks_a_third_of_the_grace_period_per_phase() -> None:
    state = transition(RotationState(), Phase.INIT, 0.0, mode="auto", grace_period=30.0).state
    assert due(state, 9.9) is None
    seen = []
    now = 0.0
    while (target := due(state, now + 10.0)) is not None:
        now += 10.0
        seen.append(target)
        state = transition(state, target, now, mode="auto").state
    assert seen == [Phase.UPDATE_CLIENTS, Phase.UPDATE_SERVERS, Phase.STANDBY]
    assert state.generation == 1 and due(state, 1e9) is None


def test_a_manual_step_stops_auto_mode() -> None:
    state = transition(RotationState(), Phase.INIT, 0.0, mode="auto", grace_period=30.0).state
    state = transition(state, Phase.ROLLBACK, 1.0).state
    assert state.mode == "manual" and due(state, 1e9) is None


@given(st.lists(st.sampled_from(list(Phase)), max_size=30))
def test_any_sequence_keeps_the_invariants(targets: list[Phase]) -> None:
    state, revisions = RotationState(), {revision(RotationState(), RotationState())}
    for i, target in enumerate(targets):
        try:
            change = transition(state, target, float(i))
        except RotationError:
            assert target not in TRANSITIONS[state.phase]
            continue
        assert change.before is state.phase and target in TRANSITIONS[state.phase]
        state = change.state
        # every change is a new revision: nodes are updated again
        assert revision(RotationState(), state) not in revisions
        revisions.add(revision(RotationState(), state))
        assert RotationState.from_dict(state.to_dict()) == state
        assert "current" in state.trusted  # the current CA is trusted in every phase


@given(st.dictionaries(st.text(max_size=8), st.one_of(st.text(), st.integers(), st.none())))
def test_damaged_state_is_a_clear_error(data: dict[str, object]) -> None:
    with contextlib.suppress(RotationError):  # any other exception fails the test
        RotationState.from_dict(data)


@contextlib.asynccontextmanager
async def rotation_store(path: Path) -> AsyncIterator[RotationStore]:
    """A RotationStore on a fresh cluster's storage in ``path`` (as ``hub start`` makes)."""
    storage = await open_sqlite(path)
    try:
        cluster = await init_cluster(storage, "lab", None)
        yield RotationStore(storage, cluster, None)
    finally:
        await storage.close()


async def test_store_full_rotation(tmp_path: Path) -> None:
    async with rotation_store(tmp_path) as store:
        before = (await store.load()).host.current.pin()
        await store.change("host", Phase.INIT, 1.0)
        cas = await store.load()
        new = cas.host.next
        assert new is not None and cas.host.trusted_pins() == [before, new.pin()]
        assert cas.host.signer.pin() == before and cas.user.state.phase is Phase.STANDBY
        await store.change("host", Phase.UPDATE_CLIENTS, 2.0)
        assert (await store.load()).host.signer.pin() == new.pin()
        assert (await store.load()).host.server.pin() == before
        await store.change("host", Phase.UPDATE_SERVERS, 3.0)
        assert (await store.load()).host.server.pin() == new.pin()
        rev = await store.revision()
        await store.change("host", Phase.STANDBY, 4.0)
        cas = await store.load()
        assert cas.host.trusted_pins() == [new.pin()] and cas.host.next is None
        assert await store.revision() == rev + 1
        assert {(c.kind, c.slot) for c in await store.storage.authorities.all()} == {
            ("user", "current"),
            ("host", "current"),
        }
        with pytest.raises(UsageError, match="host CA: cannot go from phase standby"):
            await store.change("host", Phase.ROLLBACK, 5.0)


async def test_two_hubs_auto_loops_never_both_advance(tmp_path: Path) -> None:
    """Two hubs (two Storage objects) run the auto-mode loop on one data dir at the same
    instants: every phase change is made once, never twice (each step is a
    compare-and-set on the state's revision; the loser re-reads)."""
    async with rotation_store(tmp_path) as one:
        other = await open_sqlite(tmp_path)
        try:
            two = RotationStore(other, one.cluster, None)
            await one.change("user", Phase.INIT, 0.0, mode="auto", grace_period=3.0)
            made: list[str] = []
            for now in (1.0, 2.0, 3.0):
                results = await asyncio.gather(one.advance_due(now), two.advance_due(now))
                made += [c.after.value for r in results for _, c in r]
            assert made == ["update_clients", "update_servers", "standby"]
            cas = await two.load()
            assert cas.user.state.phase is Phase.STANDBY and cas.user.next is None
        finally:
            await other.close()


async def test_store_rollback_and_auto_advance(tmp_path: Path) -> None:
    async with rotation_store(tmp_path) as store:
        before = (await store.load()).user.current.pin()
        await store.change("user", Phase.INIT, 0.0, mode="auto", grace_period=3.0)
        assert [k for k, _ in await store.advance_due(0.5)] == []
        for now in (1.0, 2.0):
            assert [k for k, _ in await store.advance_due(now)] == ["user"]
        await store.change("user", Phase.ROLLBACK, 2.5)
        await store.change("user", Phase.STANDBY, 2.6)
        cas = await store.load()
        assert cas.user.trusted_pins() == [before] and cas.user.state.last == "rolled back"
