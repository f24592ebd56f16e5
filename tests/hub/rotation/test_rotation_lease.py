"""Auto-mode CA rotation in a cluster: only the hub allowed to (the holder of the
``rotation-auto`` lease, ``HubRotation.may_advance``) makes a due phase change; every
hub still follows the state and loads the new phase."""

from __future__ import annotations

from pathlib import Path

from hub.cluster_init import init_cluster
from hub.datadir import DataDir
from hub.rotation.runtime import HubRotation
from hub.rotation.state import Phase
from hub.storage.sqlite import open_sqlite


async def test_only_the_lease_holder_advances_and_every_hub_follows(tmp_path: Path) -> None:
    now = 0.0
    first, second = await open_sqlite(tmp_path), await open_sqlite(tmp_path)  # two hubs
    try:
        cluster = await init_cluster(first, "test", None)
        data = DataDir(tmp_path)
        holder = await HubRotation.open(first, data, cluster, None, ["127.0.0.1"], lambda: now)
        other = await HubRotation.open(second, data, cluster, None, ["127.0.0.1"], lambda: now)
        other.may_advance = lambda: False
        await holder.store.change("user", Phase.INIT, now, mode="auto", grace_period=3.0)
        now = 1.5  # the step to update_clients is due
        await other.poll()
        assert other.cas.user.state.phase is Phase.INIT, "not its step to make"
        await holder.poll()
        assert holder.cas.user.state.phase is Phase.UPDATE_CLIENTS
        await other.poll()  # it follows the state the holder wrote
        assert other.cas.user.state.phase is Phase.UPDATE_CLIENTS
    finally:
        await second.close()
        await first.close()
