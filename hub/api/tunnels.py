"""The proxy's inventory of live agent tunnels, and heartbeat bookkeeping.

Which nodes this hub holds is stored as presence leases (docs/storage.md): each
flush renews the lease (:data:`LEASE_FLUSHES` flush intervals long) of every live
tunnel whose lease has :data:`RENEW_WITHIN` intervals or less left, so each lease is
written every other flush, and drops the leases of tunnels closed since the last one, so a hub that
dies without cleaning up stops showing its nodes online once their leases run
out, and a hub's restart (``presence.drop_hub``) leaves other hubs' nodes alone.
Expired leases (of hubs that died) are deleted by one hub of the cluster, the holder
of the ``presence-gc`` lease (:mod:`hub.sweeps`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.api.node_status import NodeStatus, StatusTooLarge, parse_status
from hub.storage.api import Beat, Node, Presence, Storage
from remoteler.wire.aio import Channel, Tunnel

log = logging.getLogger("remoteler.hub.api.tunnels")

#: A presence lease lasts this many flush intervals (4 x 5 s by default) ...
LEASE_FLUSHES = 4
#: ... and is renewed once it has this many intervals or less left: every other
#: flush, so 10,000 live tunnels cost 1,000 upserts a second, not 2,000, and a
#: flush may still fail or run late without a live node looking offline.
RENEW_WITHIN = 2


@dataclass
class LiveNode:
    node_id: str
    tunnel: Tunnel
    connected_at: float
    last_seen: float
    labels: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    #: what the agent supports: as stored until its first status, then that status's
    caps: tuple[str, ...] = ()
    #: the last heartbeat's status, replaced whole by each one (hub/api/node_status.py)
    status: NodeStatus = field(default_factory=NodeStatus)
    dirty: bool = False
    #: an oversized heartbeat / one with unknown keys was logged on this tunnel already
    status_warned: bool = False
    status_trimmed: bool = False
    #: labels from the join token; the agent cannot override them
    token_labels: Mapping[str, str] = field(default_factory=dict)
    #: user sessions relayed over this tunnel right now
    sessions: int = 0
    #: set while no session is relayed (a draining hub waits on it)
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def ssh_mode(self) -> str:
        """How the agent serves SSH, from its heartbeat: ``"forward"`` (to the device's own
        sshd, docs/legacy-devices.md), ``"embedded"``, or ``""`` until its first heartbeat
        after connecting says (and for agents older than forward mode)."""
        return self.status.ssh

    #: a node held here is reached over its own tunnel (hub/cluster/route.py NodeRoute)
    via = ""

    async def open_channel(self, kind: str, meta: dict[str, Any], timeout: float) -> Channel:
        """Open a channel on the node's tunnel (hub/cluster/route.py NodeRoute)."""
        return await self.tunnel.open_channel(kind, meta, timeout=timeout)

    def lost(self) -> bool:
        return self.tunnel.closed.is_set()

    def session_started(self) -> None:
        self.sessions += 1
        self.idle.clear()

    def session_ended(self) -> None:
        self.sessions -= 1
        if self.sessions <= 0:
            self.idle.set()

    @property
    def serial_ports(self) -> list[str]:
        """The serial console ports the agent offers (its heartbeat; strings only, capped)."""
        return list(self.status.serial_ports)


class TunnelRegistry:
    """node id -> live tunnel; persists online state and heartbeats in batches."""

    def __init__(self, storage: Storage, hub_id: str = "hub", flush_interval: float = 5.0) -> None:
        self.storage = storage
        #: this hub's id in presence leases (hub/hubid.py)
        self.hub_id = hub_id
        self.flush_interval = flush_interval
        #: tunnels closed since the last flush, whose last heartbeat is not yet written
        self._closed: dict[str, LiveNode] = {}
        self._live: dict[str, LiveNode] = {}
        #: node id -> when the lease this hub last wrote for it runs out
        self._leased: dict[str, float] = {}
        self._closing: set[asyncio.Future[None]] = set()
        #: counts registrations, so periodic sweeps can skip a fleet that did not change
        self.generation = 0
        #: online/offline changes not yet written: a reconnect storm costs no queries
        self._online: dict[str, tuple[bool, float]] = {}
        #: set by a draining hub of a cluster: its leases are dropped and not renewed,
        #: so other hubs route through the agents' other tunnels (hub/cluster/member.py)
        self.leaving = False

    def get(self, node_id: str) -> LiveNode | None:
        return self._live.get(node_id)

    def labels_of(self, node: Node) -> dict[str, str]:
        """The node's labels now: from its live heartbeat, else as last stored."""
        live = self._live.get(node.id)
        return dict(live.labels if live and live.labels else node.labels)

    def __len__(self) -> int:
        return len(self._live)

    def live(self) -> list[LiveNode]:
        return list(self._live.values())

    def register(self, node: Node, tunnel: Tunnel) -> LiveNode:
        """Make ``tunnel`` the node's route; the database learns it at the next flush."""
        self.generation += 1
        node_id = node.id
        old = self._live.get(node_id)
        now = time.time()
        live = LiveNode(
            node_id,
            tunnel,
            now,
            now,
            dict(node.labels),
            node.version,
            node.caps,
            token_labels=dict(node.token_labels),
        )
        self._live[node_id] = live
        self._online[node_id] = (True, now)
        self._closed.pop(node_id, None)
        if old is not None:
            log.info("tunnel replaced by a new connection", extra={"node_id": node_id})
            task = asyncio.ensure_future(old.tunnel.close(reason="replaced by a newer tunnel"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return live

    def unregister(self, node_id: str, tunnel: Tunnel) -> None:
        live = self._live.get(node_id)
        if live is None or live.tunnel is not tunnel:
            return  # a newer tunnel took over
        del self._live[node_id]
        now = time.time()
        self._online[node_id] = (False, now)
        if live.dirty:
            live.last_seen = now
            self._closed[node_id] = live

    def offline_since(self, node_id: str) -> float | None:
        """When the node's tunnel closed here, until the next flush tells the database."""
        change = self._online.get(node_id)
        return change[1] if change is not None and not change[0] else None

    def heartbeat(self, node_id: str, payload: dict[str, Any] | None) -> None:
        live = self._live.get(node_id)
        if live is None:
            return
        live.last_seen = time.time()
        live.dirty = True
        if not isinstance(payload, dict):
            return  # a PING without payload: the status did not change
        try:
            status = parse_status(payload)
        except StatusTooLarge as exc:
            if not live.status_warned:
                live.status_warned = True
                log.warning(
                    "heartbeat status ignored (logged once per tunnel): %s",
                    exc,
                    extra={"node_id": node_id},
                )
            return
        if status.unknown and not live.status_trimmed:
            live.status_trimmed = True
            log.info(
                "heartbeat keys dropped (logged once per tunnel): %s",
                ", ".join(status.unknown),
                extra={"node_id": node_id},
            )
        # Replaced, never merged: what the hub holds for a node is one status at most.
        live.status = status
        if status.labels is not None:
            live.labels = {**status.labels, **live.token_labels}
        if status.version:
            live.version = status.version
        live.caps = status.caps  # none sent: an agent older than capabilities

    async def flush(self) -> None:
        now = time.time()
        changes, self._online = self._online, {}
        presence = self.storage.presence
        expires = now + LEASE_FLUSHES * self.flush_interval
        renew_by = now + RENEW_WITHIN * self.flush_interval
        leased = self._leased
        due = [nid for nid in self._live if leased.get(nid, 0.0) <= renew_by]
        if self.leaving:  # a draining hub's leases were dropped: not written again
            due = []
        await presence.beat_many([Presence(nid, self.hub_id, expires) for nid in due])
        for nid in due:
            leased[nid] = expires
        for node_id, (online, _when) in changes.items():
            if not online and node_id not in self._live:
                leased.pop(node_id, None)
                await presence.drop(node_id, self.hub_id)
        closed, self._closed = self._closed, {}
        beats = []
        for live in [*self._live.values(), *closed.values()]:
            if live.dirty:
                live.dirty = False
                audit = live.status.audit
                pending, oldest = (audit.pending, audit.oldest) if audit else (0, None)
                beats.append(
                    Beat(
                        live.node_id,
                        live.last_seen,
                        live.labels,
                        live.version,
                        pending,
                        oldest,
                        live.status.clock_skew,
                        live.caps,
                    )
                )
        if not beats:
            return
        for node_id in await self.storage.nodes.heartbeats(beats):
            removed = self._live.get(node_id)
            if removed is not None:
                log.info("node was removed; closing its tunnel", extra={"node_id": node_id})
                await removed.tunnel.close(reason="node removed from the hub")

    async def run_flusher(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("heartbeat flush failed; will retry")
