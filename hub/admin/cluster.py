"""``tctl cluster set``: settings every hub of the cluster follows (docs/cluster.md)."""

from __future__ import annotations

from typing import Any

from hub.admin.rpc import AdminCall, AdminHandler
from hub.cluster.directory import CONNECTION_COUNT_KEY, MAX_CONNECTION_COUNT
from remoteler.admin import AdminMethod
from remoteler.errors import UsageError


async def cluster_set(call: AdminCall, params: dict[str, Any]) -> Any:
    """Set (or with 0, clear) how many tunnels each agent keeps; hubs tell their agents
    at their next registration beat (within 5 s)."""
    count = params.get("connection_count")
    if isinstance(count, bool) or not isinstance(count, int):
        raise UsageError("give --agent-connections N (1 to 8, or 0 for the default)")
    if not 0 <= count <= MAX_CONNECTION_COUNT:
        raise UsageError(
            f"--agent-connections must be 1 to {MAX_CONNECTION_COUNT}, or 0 for the default "
            "(2 with two hubs or more, else 1)"
        )
    await call.host.storage.settings.put(CONNECTION_COUNT_KEY, str(count) if count else "")
    await call.changed("cluster.set", "agent_connection_count", value=count)
    return {"agent_connection_count": count or None}


METHODS: dict[AdminMethod, AdminHandler] = {AdminMethod.CLUSTER_SET: cluster_set}
