"""How a hub reaches a node: over the node's own tunnel, or over a peer link to a hub
that holds it. Either way the hub only gets a channel of bytes to the node's agent.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from remoteler.protocol import RELAY_KIND
from remoteler.wire.aio import Channel, Tunnel

#: Extra seconds a relayed open waits: the holding hub waits ``timeout`` on the agent.
RELAY_MARGIN = 5.0


class NodeRoute(Protocol):
    """A way to open channels on one node's agent (hub/api/tunnels.py LiveNode is one)."""

    #: the hub that holds the node's tunnel when it is not this one, else ""
    via: str

    async def open_channel(self, kind: str, meta: dict[str, Any], timeout: float) -> Channel:
        """Open a ``kind`` channel on the node's tunnel; raises ChannelOpenError or
        TunnelClosed as :meth:`Tunnel.open_channel` does."""
        ...

    def session_started(self) -> None: ...

    def session_ended(self) -> None: ...

    def lost(self) -> bool:
        """True once the tunnel (or peer link) carrying the route has closed."""
        ...


class SessionCount:
    """Sessions this hub relays through peers, so a drain can wait for them."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def started(self) -> None:
        self.count += 1
        self.idle.clear()

    def ended(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self.idle.set()


class PeerRoute:
    """A node whose tunnel ``hub_id`` holds, reached over the peer link to it: each
    channel is a ``relay`` channel that the holding hub joins to the agent's."""

    def __init__(
        self, link: Tunnel, node_id: str, hub_id: str, sessions: SessionCount | None = None
    ) -> None:
        self.link = link
        self.node_id = node_id
        self.via = hub_id
        self.sessions = sessions or SessionCount()

    async def open_channel(self, kind: str, meta: dict[str, Any], timeout: float) -> Channel:
        return await self.link.open_channel(
            RELAY_KIND,
            {"node": self.node_id, "kind": kind, "meta": meta, "timeout": timeout},
            timeout=timeout + RELAY_MARGIN,
        )

    def session_started(self) -> None:
        """Counted here (this hub's drain waits for it) and by the holding hub."""
        self.sessions.started()

    def session_ended(self) -> None:
        self.sessions.ended()

    def lost(self) -> bool:
        return self.link.closed.is_set()
