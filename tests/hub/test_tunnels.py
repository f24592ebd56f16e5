"""TunnelRegistry: heartbeats reach the database in batches, token labels win."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hub.backend import Node, SQLiteBackend
from hub.tctl import _backlog
from hub.tunnels import TunnelRegistry


class _Closable:
    """Stands in for a Tunnel: the registry only stores it and may close it."""

    closed_with: str | None = None

    async def close(self, reason: str = "", **_: Any) -> None:
        self.closed_with = reason


async def test_heartbeat_status_is_flushed_with_token_labels_winning(tmp_path: Path) -> None:
    backend = await SQLiteBackend.open(tmp_path / "hub.db")
    try:
        node = Node(id="n1", name="truck", labels={}, joined=1.0, token_labels={"tier": "gold"})
        await backend.add_node(node)
        registry = TunnelRegistry(backend)
        registry.register(node, _Closable())  # type: ignore[arg-type]
        registry.heartbeat(
            "n1",
            {
                "labels": {"tier": "silver", "env": "lab"},
                "version": "9.9",
                "audit": {"pending": 42, "bytes": 1000, "oldest": 123.5},
            },
        )
        registry.heartbeat("n1", {"labels": {"bad key": "x"}})  # invalid labels are ignored
        await registry.flush()
        stored = await backend.get_node("truck")
        assert stored is not None and stored.online
        assert dict(stored.labels) == {"tier": "gold", "env": "lab"}
        assert (stored.audit_pending, stored.audit_oldest, stored.version) == (42, 123.5, "9.9")
    finally:
        await backend.close()


async def test_removed_node_gets_its_tunnel_closed(tmp_path: Path) -> None:
    backend = await SQLiteBackend.open(tmp_path / "hub.db")
    try:
        node = Node(id="n2", name="gone", joined=1.0)
        await backend.add_node(node)
        registry = TunnelRegistry(backend)
        tunnel = _Closable()
        registry.register(node, tunnel)  # type: ignore[arg-type]
        await backend.delete_node("gone")
        registry.heartbeat("n2", None)
        await registry.flush()
        assert tunnel.closed_with == "node removed from the hub"
    finally:
        await backend.close()


def test_backlog_column() -> None:
    assert _backlog(0, None, 100.0) == "0"
    assert _backlog(5, 70.0, 100.0) == "5 (oldest 30s)"
    assert _backlog(5, 100.0 - 600, 100.0) == "5 (oldest 10m)"
    assert _backlog(5, 100.0 - 4 * 3600, 100.0) == "5 (oldest 4h)"
