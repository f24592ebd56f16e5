"""The hub's rotation follower tries again what failed: a reload, an agent's update."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hub.cluster_init import init_cluster
from hub.datadir import DataDir
from hub.rotation import runtime as rotation_runtime
from hub.rotation.runtime import HubRotation
from hub.rotation.state import Phase
from hub.rotation.store import CASet
from hub.storage.sqlite import open_sqlite
from remoteler.errors import ConfigError
from remoteler.wire.codes import ErrorCode
from remoteler.wire.exceptions import TunnelClosed


@contextlib.asynccontextmanager
async def hub_rotation(path: Path) -> AsyncIterator[HubRotation]:
    storage = await open_sqlite(path)
    try:
        cluster = await init_cluster(storage, "test", None)
        yield await HubRotation.open(storage, DataDir(path), cluster, None, ["127.0.0.1"])
    finally:
        await storage.close()


class _Tunnel:
    """Stands for a live tunnel; only its identity matters here."""


async def test_a_failed_update_is_retried_on_the_agents_next_tunnel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with hub_rotation(tmp_path) as rotation:
        await _retried_on_next_tunnel(rotation, monkeypatch)


async def _retried_on_next_tunnel(rotation: HubRotation, monkeypatch: pytest.MonkeyPatch) -> None:
    async def link_drops(live: Any) -> None:
        raise TunnelClosed(ErrorCode.GOING_AWAY, "link dropped")

    rotation.push = link_drops  # type: ignore[method-assign]
    # CPython gives a freed object's memory (its id()) to the next object of its size:
    # the agent's new tunnel often has the old one's id. Make that certain here.
    monkeypatch.setattr(rotation_runtime, "id", lambda obj: 0x7F0000, raising=False)
    first = SimpleNamespace(node_id="n1", tunnel=_Tunnel())
    await rotation._push_guarded(first)  # type: ignore[arg-type]
    assert not rotation.stale(first)  # type: ignore[arg-type]  # not again on that tunnel

    del first  # the agent's tunnel is gone; it redials
    gc.collect()
    again = SimpleNamespace(node_id="n1", tunnel=_Tunnel())
    assert rotation.stale(again)  # type: ignore[arg-type]


async def test_a_failed_reload_is_tried_again(tmp_path: Path) -> None:
    async with hub_rotation(tmp_path) as rotation:
        await rotation.store.change("user", Phase.INIT, time.time())
        real, calls = rotation.store.load_revision, []

        async def load_once_failing() -> tuple[CASet, int]:
            calls.append(1)
            if len(calls) == 1:
                raise ConfigError("the next CA key is being written")
            return await real()

        rotation.store.load_revision = load_once_failing  # type: ignore[method-assign]
        with pytest.raises(ConfigError):
            await rotation.poll()
        await rotation.poll()  # the state did not change again: it must still be loaded
        assert rotation.cas.user.state.phase is Phase.INIT


async def test_the_admin_identity_hook_runs_before_the_tls_context_changes(
    tmp_path: Path,
) -> None:
    """tctl trusts the CAs in DATA/admin-identity: the hook that rewrites it runs after the
    new CAs are in use and before the listener gets the new server certificate, so no
    tctl started after the swap meets a certificate its identity does not trust. A
    failing hook does not hold the swap back."""
    from hub.rotation.runtime import RotationDeps

    async with hub_rotation(tmp_path) as rotation:
        order: list[str] = []

        async def hook() -> None:
            order.append("identity")
            raise OSError("disk full")

        rotation.attach(
            RotationDeps(
                live=list,
                get_node=rotation.store.storage.nodes.get,
                audit=None,
                use_cas=lambda cas: order.append("cas"),
                set_tls_context=lambda ctx: order.append("tls"),
                before_tls=hook,
            )
        )
        order.clear()
        await rotation.store.change("host", Phase.INIT, time.time(), mode="manual")
        await rotation.poll()
        assert order == ["cas", "identity", "tls"], order
