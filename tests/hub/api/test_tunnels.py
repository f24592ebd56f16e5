"""TunnelRegistry: heartbeats reach the database in batches, token labels win."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from hub.api import tunnels
from hub.api.node_status import MAX_STATUS_BYTES, AuditBacklog, parse_status, status_size
from hub.api.tunnels import TunnelRegistry
from hub.storage.api import Node
from hub.storage.sqlite import open_sqlite
from tctl.cli import _backlog


class _Closable:
    """Stands in for a Tunnel: the registry only stores it and may close it."""

    closed_with: str | None = None

    async def close(self, reason: str = "", **_: Any) -> None:
        self.closed_with = reason


async def test_heartbeat_status_is_flushed_with_token_labels_winning(tmp_path: Path) -> None:
    storage = await open_sqlite(tmp_path)
    try:
        node = Node(id="n1", name="truck", labels={}, joined=1.0, token_labels={"tier": "gold"})
        await storage.nodes.add(node)
        registry = TunnelRegistry(storage)
        registry.register(node, _Closable())  # type: ignore[arg-type]
        registry.heartbeat(
            "n1",
            {
                "labels": {"tier": "silver", "env": "lab"},
                "version": "9.9",
                "audit": {"pending": 42, "bytes": 1000, "oldest": 123.5},
            },
        )
        # invalid labels are ignored: the node keeps the labels it had
        registry.heartbeat(
            "n1", {"labels": {"bad key": "x"}, "audit": {"pending": 42, "oldest": 123.5}}
        )
        await registry.flush()
        stored = await storage.nodes.get("truck")
        assert stored is not None and stored.online
        assert dict(stored.labels) == {"tier": "gold", "env": "lab"}
        assert (stored.audit_pending, stored.audit_oldest, stored.version) == (42, 123.5, "9.9")
    finally:
        await storage.close()


async def test_infinite_oldest_does_not_break_tctl_nodes_ls(tmp_path: Path) -> None:
    """A node reporting its oldest pending event at +-infinity (msgpack carries it) had it
    stored as is, and ``tctl nodes ls`` then died on int(inf) for every admin."""
    storage = await open_sqlite(tmp_path)
    try:
        registry = TunnelRegistry(storage)
        for i, oldest in enumerate((float("inf"), float("-inf"))):
            node = Node(id=f"n{i}", name=f"dev{i}", joined=1.0)
            await storage.nodes.add(node)
            registry.register(node, _Closable())  # type: ignore[arg-type]
            registry.heartbeat(node.id, {"audit": {"pending": 3, "oldest": oldest}})
        await registry.flush()
        for node in await storage.nodes.all():
            assert node.audit_oldest is None
            assert _backlog(node.audit_pending, node.audit_oldest, 100.0) == "3"
    finally:
        await storage.close()


async def test_heartbeat_text_reaches_terminals_without_controls(tmp_path: Path) -> None:
    """Version and serial port names are printed by tsh ls -v and tctl nodes ls: a
    compromised device's escape sequences (OSC 52 clipboard writes, cursor moves) in
    them are replaced by '?' at the hub, not passed to operators' terminals."""
    storage = await open_sqlite(tmp_path)
    try:
        node = Node(id="n4", name="dev4", joined=1.0)
        await storage.nodes.add(node)
        registry = TunnelRegistry(storage)
        registry.register(node, _Closable())  # type: ignore[arg-type]
        evil = "1.0\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2J"
        registry.heartbeat("n4", {"version": evil, "serial_ports": ["tty\x1b[1A\r"]})
        live = registry.get("n4")
        assert live is not None
        assert live.version == "1.0?]52;c;ZWNobyBwd25lZA==??[2J"
        assert live.serial_ports == ["tty?[1A?"]
        await registry.flush()
        stored = await storage.nodes.get("dev4")
        assert stored is not None and stored.version == live.version
    finally:
        await storage.close()


async def test_removed_node_gets_its_tunnel_closed(tmp_path: Path) -> None:
    storage = await open_sqlite(tmp_path)
    try:
        node = Node(id="n2", name="gone", joined=1.0)
        await storage.nodes.add(node)
        registry = TunnelRegistry(storage)
        tunnel = _Closable()
        registry.register(node, tunnel)  # type: ignore[arg-type]
        await storage.nodes.delete("gone")
        registry.heartbeat("n2", None)
        await registry.flush()
        assert tunnel.closed_with == "node removed from the hub"
    finally:
        await storage.close()


def test_backlog_column() -> None:
    assert _backlog(0, None, 100.0) == "0"
    assert _backlog(5, 70.0, 100.0) == "5 (oldest 30s)"
    assert _backlog(5, 100.0 - 600, 100.0) == "5 (oldest 10m)"
    assert _backlog(5, 100.0 - 4 * 3600, 100.0) == "5 (oldest 4h)"


async def test_heartbeat_status_is_replaced_not_merged(tmp_path: Path) -> None:
    storage = await open_sqlite(tmp_path)
    try:
        node = Node(id="n3", name="dev", joined=1.0)
        await storage.nodes.add(node)
        registry = TunnelRegistry(storage)
        registry.register(node, _Closable())  # type: ignore[arg-type]
        first = {"version": "1", "ssh": "forward", "serial_ports": ["ttyS0"], "new-1": "x" * 100}
        registry.heartbeat("n3", first)
        live = registry.get("n3")
        assert live is not None
        assert (live.ssh_mode, live.serial_ports) == ("forward", ["ttyS0"])
        registry.heartbeat("n3", {"version": "2", "new-2": "y"})
        assert (live.ssh_mode, live.serial_ports, live.version) == ("", [], "2")
        assert live.status.audit is None
        registry.heartbeat("n3", None)  # a PING without payload keeps the status
        assert live.version == "2"
        # over the cap: ignored whole, the previous status stays
        huge = {"version": "3", "ssh": "embedded", "junk": "z" * (MAX_STATUS_BYTES + 1)}
        registry.heartbeat("n3", huge)
        assert (live.version, live.ssh_mode) == ("2", "")
        for i in range(1000):  # new keys every time: nothing accumulates
            registry.heartbeat("n3", {f"key-{i}": "v" * 1000, "ssh": "embedded"})
        assert live.ssh_mode == "embedded"
        assert len(repr(live.status)) < 1024
    finally:
        await storage.close()


def test_parse_status_keeps_known_keys_typed_and_capped() -> None:
    status = parse_status(
        {
            "labels": {"env": "lab"},
            "version": "v" * 500,
            "name": 7,
            "ssh": "telnet",
            "serial_ports": ["p" * 1000, 5, *[f"tty{i}" for i in range(100)]],
            "audit": {"pending": -5, "bytes": True, "oldest": float("nan")},
            "extra": {"deep": ["x"]},
        }
    )
    assert status.labels == {"env": "lab"}
    assert (len(status.version), status.name, status.ssh) == (64, "", "")
    assert len(status.serial_ports) == 31 and status.serial_ports[0] == "p" * 256
    assert status.audit == AuditBacklog(0, 0, None)
    assert status.unknown == ("extra",)
    assert parse_status({"labels": {"bad key": "x"}}).labels is None


def test_status_size_stops_at_the_cap() -> None:
    assert status_size({"a": "bb"}, 100) == 1 + 2 + 3
    big = {str(i): [i] * 10 for i in range(100_000)}
    assert status_size(big, 1000) <= 1000 + 64
    assert status_size(["x" * 10] * 10**6, 1000) == 1001


async def test_presence_two_hubs_on_one_file_and_a_restart(tmp_path: Path) -> None:
    """Hubs A and B on one hub.db: the flush leases each hub's tunnels under its id, a
    closed tunnel's lease goes at the next flush, and B's restart (drop_hub at start)
    leaves A's nodes online: the old mark_all_offline() marked every node offline."""

    a, b = await open_sqlite(tmp_path), await open_sqlite(tmp_path)
    try:
        nodes = [Node(id=f"n{i}", name=f"dev{i}", joined=1.0) for i in range(4)]
        for node in nodes:
            await a.nodes.add(node)
        hub_a = TunnelRegistry(a, "hub-a", flush_interval=5.0)
        hub_b = TunnelRegistry(b, "hub-b", flush_interval=5.0)
        held = _Closable()
        for node in nodes[:2]:
            hub_a.register(node, held)  # type: ignore[arg-type]
        for node in nodes[2:]:
            hub_b.register(node, _Closable())  # type: ignore[arg-type]
        await hub_a.flush()
        await hub_b.flush()
        listed = {n.name: n.held_by for n in await a.nodes.all()}
        assert listed == {
            "dev0": ("hub-a",),
            "dev1": ("hub-a",),
            "dev2": ("hub-b",),
            "dev3": ("hub-b",),
        }
        (lease,) = await a.presence.holders("n0", 0.0)
        assert 19.0 < lease.expires - time.time() <= tunnels.LEASE_FLUSHES * 5.0

        hub_a.unregister("n1", held)  # type: ignore[arg-type]
        await hub_a.flush()
        assert await b.presence.drop_hub("hub-b") == 2  # B restarts
        online = [n.name for n in await b.nodes.all() if n.online]
        assert online == ["dev0"], online
    finally:
        await a.close()
        await b.close()


async def test_each_lease_is_written_every_other_flush(tmp_path: Path) -> None:
    """A lease of 4 intervals renewed when 2 or fewer are left: half the writes of
    renewing at every flush, and never less than 2 intervals of margin."""
    storage = await open_sqlite(tmp_path)
    try:
        node = Node(id="n9", name="dev9", joined=1.0)
        await storage.nodes.add(node)
        registry = TunnelRegistry(storage, "hub-a", flush_interval=0.2)
        registry.register(node, _Closable())  # type: ignore[arg-type]
        seen = []
        for _ in range(6):
            await registry.flush()
            (lease,) = await storage.presence.holders("n9", 0.0)
            seen.append(lease.expires)
            left = lease.expires - time.time()
            assert left > tunnels.RENEW_WITHIN * 0.2 - 0.05, left  # the margin holds
            await asyncio.sleep(0.2)
        assert len(set(seen)) in (3, 4), seen  # written at flushes 1, 3, 5 (6 with slack)
    finally:
        await storage.close()
