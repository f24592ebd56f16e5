"""What the hub keeps of a heartbeat's clock skew and capabilities
(hub/api/node_status.py), down to the nodes table that ``tctl nodes ls`` reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hub.api.node_status import parse_status
from hub.api.tunnels import TunnelRegistry
from hub.storage.api import Node
from hub.storage.sqlite import open_sqlite
from remoteler.clockskew import format_skew


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (1_800_000_000, 1_800_000_000.0),
        (0, None),
        (-5, None),
        (1e13, None),
        (float("nan"), None),
        (True, None),
        ("1800000000", None),
    ],
)
def test_host_cert_expiry_kept_only_as_a_sane_time(sent: object, kept: float | None) -> None:
    status = parse_status({"version": "0.1.0", "cert_expires": sent})
    assert status.cert_expires == kept and "cert_expires" not in status.unknown


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (-1200.0, -1200.0),
        (86400, 86400.0),
        (float("nan"), None),
        (float("inf"), None),
        (1e12, None),  # beyond 100 years
        (True, None),
        ("-1200", None),
    ],
)
def test_clock_skew_kept_only_as_a_sane_number(sent: object, kept: float | None) -> None:
    status = parse_status({"version": "0.1.0", "clock_skew": sent})
    assert status.clock_skew == kept
    assert "clock_skew" not in status.unknown


def test_absent_skew_is_none() -> None:
    assert parse_status({"version": "0.1.0"}).clock_skew is None


class _Closable:
    """Stands in for a Tunnel: the registry only stores it."""

    async def close(self, reason: str = "", **_: Any) -> None:
        pass


async def test_skew_reaches_the_nodes_table_and_goes_when_fixed(tmp_path: Path) -> None:
    storage = await open_sqlite(tmp_path)
    try:
        node = Node(id="n1", name="truck", joined=1.0)
        await storage.nodes.add(node)
        registry = TunnelRegistry(storage)
        registry.register(node, _Closable())  # type: ignore[arg-type]
        registry.heartbeat("n1", {"version": "0.1.0", "clock_skew": -1200.0})
        await registry.flush()
        stored = await storage.nodes.get("truck")
        assert stored is not None and stored.clock_skew == -1200.0
        assert format_skew(stored.clock_skew) == "-20 min"  # tctl nodes ls' Clock column
        registry.heartbeat("n1", {"version": "0.1.0"})  # NTP fixed it: the agent stops sending
        await registry.flush()
        stored = await storage.nodes.get("truck")
        assert stored is not None and stored.clock_skew is None
    finally:
        await storage.close()


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (["resume"], ("resume",)),
        ([], ()),
        ("resume", ()),  # wrong type: as absent
        ({"resume": 1}, ()),
        (None, ()),
        ([f"c{i}" for i in range(17)], ()),  # too many
        (["x" * 33], ()),  # too long
        (["resume", "\x1b]52;c;aGk=\x07"], ()),  # non-printable: the list is refused whole
        (["resume", 5], ()),
    ],
)
def test_caps_kept_only_as_a_short_list_of_plain_names(sent: object, kept: tuple[str, ...]) -> None:
    status = parse_status({"version": "0.1.0", "caps": sent})
    assert status.caps == kept
    assert "caps" not in status.unknown


def test_absent_caps_are_none_an_older_agents() -> None:
    assert parse_status({"version": "0.1.0"}).caps == ()


async def test_caps_reach_the_nodes_table_and_an_older_agent_has_none(tmp_path: Path) -> None:
    storage = await open_sqlite(tmp_path)
    try:
        node = Node(id="n1", name="truck", joined=1.0)
        await storage.nodes.add(node)
        registry = TunnelRegistry(storage)
        registry.register(node, _Closable())  # type: ignore[arg-type]
        registry.heartbeat("n1", {"version": "0.2.0", "caps": ["resume"]})
        await registry.flush()
        stored = await storage.nodes.get("truck")
        assert stored is not None and stored.caps == ("resume",)
        # a new tunnel starts from the stored copy until its first status arrives ...
        live = registry.register(stored, _Closable())  # type: ignore[arg-type]
        assert live.caps == ("resume",)
        registry.heartbeat("n1", None)  # a PING without payload keeps it
        assert live.caps == ("resume",)
        # ... and the agent downgraded to one without capabilities: none, not the old ones
        registry.heartbeat("n1", {"version": "0.1.0"})
        await registry.flush()
        stored = await storage.nodes.get("truck")
        assert stored is not None and stored.caps == ()
    finally:
        await storage.close()
