"""This hub as a member of a cluster: its identity, registration, peer links and the
hub list its agents are told. Built and started by hub/app.py after the main listener.

A lone hub (SQLite, or one hub on PostgreSQL) runs the same code: it registers, lists
itself, tells its agents to keep one tunnel, and has no peers to link to.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from hub.api.hublist import HubListPusher
from hub.api.tunnels import TunnelRegistry
from hub.cluster.addrs import WILDCARDS
from hub.cluster.directory import HubDirectory
from hub.cluster.identity import PeerIdentity
from hub.cluster.peers import PeerLinks
from hub.net.listener import ListenerLimits
from hub.storage.api import Storage
from remoteler.addr import format_hostport, parse_hostport
from remoteler.ca import CertAuthority
from remoteler.errors import ConfigError

log = logging.getLogger("remoteler.hub.cluster")

#: Seconds between two checks of the hub certificate's age.
RENEW_CHECK = 600.0


class ClusterMember:
    def __init__(
        self,
        storage: Storage,
        hub_id: str,
        registry: TunnelRegistry,
        host_cas: Callable[[], tuple[CertAuthority, list[bytes]]],
        hosts: list[str],
        listener_limits: ListenerLimits | None = None,
    ) -> None:
        """``host_cas`` gives the host CA that serves now and every trusted host CA's PEM
        (they follow a CA rotation); ``hosts`` are the names put in the certificate."""
        self.storage = storage
        self.hub_id = hub_id
        self.registry = registry
        self.host_cas = host_cas
        self.hosts = hosts
        self.identity = self._issue()
        self.directory = HubDirectory(storage, hub_id, "", "", agents=lambda: len(registry))
        self.peers = PeerLinks(hub_id, self.directory, registry, self.identity, listener_limits)
        self.pusher = HubListPusher(
            registry.live, self.directory.hub_list, generation=lambda: registry.generation
        )
        self.directory.on_change(self.pusher.poke)
        self.left = False

    def _issue(self) -> PeerIdentity:
        server, trusted = self.host_cas()
        return PeerIdentity.issue(self.hub_id, server, trusted, self.hosts)

    async def start(self, public_addr: str, peer_listen: str | None) -> None:
        """Listen for peers (if ``peer_listen``), then register with the cluster."""
        self.directory.public_addr = public_addr
        if peer_listen:
            host, port = parse_hostport(peer_listen)
            try:
                bound_host, bound_port = await self.peers.start(host, port)
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen for peer hubs on {peer_listen}: "
                    f"{exc.strerror or exc}; pick another --peer-listen"
                ) from None
            if bound_host in WILDCARDS:
                bound_host = parse_hostport(public_addr)[0]
            self.directory.peer_addr = format_hostport(bound_host, bound_port)
            log.info("peer listener up", extra={"addr": self.directory.peer_addr})
        await self.directory.beat()

    def loops(self) -> list[Coroutine[Any, Any, None]]:
        """What runs until the hub stops (the composition root owns the tasks)."""
        return [self.directory.run(), self.peers.run(), self.pusher.run(), self._renew()]

    def cas_changed(self) -> None:
        """A CA rotation step: a certificate from the host CA that serves now; when a
        host CA is no longer trusted, links made with it end (both ends redial)."""
        before = set(self.identity.trusted_pems)
        self.identity = self._issue()
        self.peers.set_identity(self.identity)
        if before - set(self.identity.trusted_pems):
            self.peers.drop_links("a host CA was retired")

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_CHECK)
            if self.identity.due(time.time()):
                self.cas_changed()

    async def leave(self) -> None:
        """A drain: leave the hub list and stop holding nodes, so other hubs route
        through the agents' other tunnels and agents move (before the tunnels close)."""
        if self.left:
            return
        self.left = True
        self.registry.leaving = True
        self.directory.leaving = True
        try:
            await self.directory.leave()
        except Exception:
            log.exception("could not drop this hub's record; it lapses in 15 s")
        try:
            await self.storage.presence.drop_hub(self.hub_id)
        except Exception:
            log.exception("could not drop this hub's presence leases; they lapse in 20 s")

    async def close(self) -> None:
        await self.leave()
        await self.pusher.close()
        await self.peers.close()
