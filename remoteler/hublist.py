"""The cluster's hub list, as a hub tells its agents (docs/wire-protocol.md, "The hubs channel").

A hub opens a ``hubs`` channel (:data:`remoteler.protocol.HUBS_KIND`) on an
agent's tunnel, writes :meth:`HubList.encode`, then EOF; the agent answers
``ok`` and closes. The body is one msgpack map::

    {"hub_id": str, "hubs": [[id, "HOST:PORT"], ...], "connections": int}

``hub_id`` is the sender (the hub this tunnel is on), ``hubs`` every live hub
sorted by id (the sender included), ``connections`` how many tunnels the agent
should keep (1 to :data:`MAX_CONNECTIONS`). Keys a later version adds are
ignored by :func:`decode`; anything else malformed raises ValueError.

Only msgpack is imported: the agent loads this at start-up.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import msgpack

__all__ = [
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "MAX_HUBS",
    "MAX_ID",
    "HubList",
    "decode",
]

#: Most hubs in one list.
MAX_HUBS = 256
#: Longest hub id (characters).
MAX_ID = 64
#: Longest hub address ``HOST:PORT`` (characters: a DNS name and a port).
MAX_ADDR = 255
#: Largest encoded list (bytes): 256 hubs of ids and addresses up to 220 characters
#: together fit, not all of the longest of both.
MAX_BODY = 64 << 10
#: Most tunnels a list may ask an agent to keep.
MAX_CONNECTIONS = 8


def _check_addr(addr: str) -> None:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ValueError(f"hub address {addr[:40]!r} is not HOST:PORT")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"hub address {addr[:40]!r}: port out of range")
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        raise ValueError(f"hub address {addr[:40]!r}: an IPv6 host needs brackets")
    if not host.isprintable() or any(c.isspace() for c in addr):
        raise ValueError("hub address has spaces or control characters")


def _check_id(hub_id: object) -> str:
    if not isinstance(hub_id, str) or not 1 <= len(hub_id) <= MAX_ID:
        raise ValueError(f"a hub id must be a string of 1 to {MAX_ID} characters")
    if not hub_id.isprintable():
        raise ValueError("a hub id must be printable")
    return hub_id


@dataclass(frozen=True)
class HubList:
    """The live hubs of a cluster, as one of them sees them. Valid once built:
    the constructor raises ValueError otherwise, the body cap included (use
    :meth:`build` to sort)."""

    hub_id: str
    """The hub sending the list: the one the tunnel it came on is connected to."""
    hubs: tuple[tuple[str, str], ...]
    """``(id, "HOST:PORT")`` of every live hub, sorted by id, the sender included."""
    connection_count: int
    """How many tunnels, to distinct hubs, the agent should keep (1 to 8)."""

    def __post_init__(self) -> None:
        _check_id(self.hub_id)
        if not isinstance(self.hubs, tuple) or not 1 <= len(self.hubs) <= MAX_HUBS:
            raise ValueError(f"a hub list names 1 to {MAX_HUBS} hubs")
        previous = ""
        for entry in self.hubs:
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise ValueError("a hub entry is (id, address)")
            hub_id, addr = entry
            _check_id(hub_id)
            if not isinstance(addr, str) or not 1 <= len(addr) <= MAX_ADDR:
                raise ValueError(f"a hub address must be a string of 1 to {MAX_ADDR} characters")
            _check_addr(addr)
            if hub_id <= previous:
                raise ValueError("hub ids must be unique and sorted")
            previous = hub_id
        if self.hub_id not in self.ids():
            raise ValueError("the sending hub is not in its own list")
        count = self.connection_count
        if type(count) is not int or not 1 <= count <= MAX_CONNECTIONS:
            raise ValueError(f"connection count must be 1 to {MAX_CONNECTIONS}")
        if len(self.encode()) > MAX_BODY:  # 256 hubs of the longest names do not fit
            raise ValueError(f"a hub list encodes to at most {MAX_BODY} bytes")

    @classmethod
    def build(cls, hub_id: str, hubs: Any, connection_count: int) -> HubList:
        """A list from ``(id, addr)`` pairs in any order (duplicate ids raise)."""
        return cls(hub_id, tuple(sorted((str(i), str(a)) for i, a in hubs)), connection_count)

    def ids(self) -> tuple[str, ...]:
        return tuple(hub_id for hub_id, _ in self.hubs)

    def addr_of(self, hub_id: str) -> str | None:
        return next((addr for i, addr in self.hubs if i == hub_id), None)

    def encode(self) -> bytes:
        body: bytes = msgpack.packb(
            {
                "hub_id": self.hub_id,
                "hubs": [list(entry) for entry in self.hubs],
                "connections": self.connection_count,
            },
            use_bin_type=True,
        )
        return body

    def digest(self) -> str:
        """16 hex digits naming this list (what the hub last pushed to a tunnel)."""
        return hashlib.sha256(self.encode()).hexdigest()[:16]


def decode(data: bytes) -> HubList:
    """The list in ``data``; ValueError on anything malformed or over the caps."""
    if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_BODY:
        raise ValueError(f"a hub list is at most {MAX_BODY} bytes")
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_BODY,
            max_bin_len=0,
            max_array_len=MAX_HUBS,
            max_map_len=64,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise ValueError(f"hub list is not msgpack: {type(exc).__name__}") from None
    if not isinstance(raw, dict):
        raise ValueError("a hub list must be a map")
    hubs, count = raw.get("hubs"), raw.get("connections")
    if not isinstance(hubs, list):
        raise ValueError("a hub list needs 'hubs', a list of [id, address]")
    entries = []
    for entry in hubs:
        if not isinstance(entry, list) or len(entry) != 2:
            raise ValueError("a hub entry must be [id, address]")
        hub_id, addr = entry
        if not isinstance(hub_id, str) or not isinstance(addr, str):
            raise ValueError("a hub entry must be two strings")
        entries.append((hub_id, addr))
    if type(count) is not int:
        raise ValueError("a hub list needs 'connections', an integer")
    return HubList(_check_id(raw.get("hub_id")), tuple(sorted(entries)), count)
