"""The cluster's hub list: this hub's registration lease, and every live hub's.

Each hub writes its :class:`~hub.storage.api.HubRecord` every :data:`BEAT_INTERVAL`
seconds with a lease of :data:`LEASE` seconds, and reads everyone's in the same beat;
a hub killed with SIGKILL drops out of every list once its lease lapses. A clean stop
drops the record at once (:meth:`HubDirectory.leave`).

What agents are told (``hubs`` channel, remoteler/hublist.py) comes from here: every
live hub's public address, and how many tunnels an agent should keep
(:meth:`HubDirectory.connection_count`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from hub.storage.api import HubRecord, Storage
from remoteler.hublist import MAX_CONNECTIONS, HubList
from remoteler.protocol import VERSION

log = logging.getLogger("remoteler.hub.cluster")

#: Seconds between two writes of this hub's record (and reads of everyone's).
BEAT_INTERVAL = 5.0
#: A registration lasts this long unless renewed: three missed beats.
LEASE = 15.0
#: The settings key of the cluster's agent connection count (``tctl cluster set``).
CONNECTION_COUNT_KEY = "agent_connection_count"
#: Most tunnels an agent keeps (the setting's bound): the hub list's own cap.
MAX_CONNECTION_COUNT = MAX_CONNECTIONS


def default_connection_count(hubs: int) -> int:
    """Two tunnels per agent once the cluster has two hubs or more, else one."""
    return 2 if hubs >= 2 else 1


class HubDirectory:
    """This hub's place in the cluster; :meth:`run` keeps it current until cancelled."""

    def __init__(
        self,
        storage: Storage,
        hub_id: str,
        public_addr: str,
        peer_addr: str,
        agents: Callable[[], int],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.hub_id = hub_id
        self.public_addr = public_addr
        self.peer_addr = peer_addr
        self.agents = agents
        self.clock = clock
        self.started = clock()
        #: hub id -> its record, as read at the last beat (this hub included)
        self.hubs: dict[str, HubRecord] = {}
        #: the cluster setting, or None for the default by cluster size
        self.configured_count: int | None = None
        self._listeners: list[Callable[[], None]] = []
        self.leaving = False

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after a beat that changed the hub list or the count."""
        self._listeners.append(callback)

    def record(self) -> HubRecord:
        now = self.clock()
        return HubRecord(
            id=self.hub_id,
            public_addr=self.public_addr,
            peer_addr=self.peer_addr,
            started=self.started,
            expires=now + LEASE,
            agents=self.agents(),
            version=VERSION,
            beat_at=now,
        )

    async def beat(self) -> None:
        """Renew this hub's lease and read the cluster's (one write, two reads)."""
        before = (self._shape(), self.connection_count())
        if not self.leaving:
            await self.storage.hubs.beat(self.record())
        live = await self.storage.hubs.live(self.clock())
        self.hubs = {h.id: h for h in live}
        raw = await self.storage.settings.get(CONNECTION_COUNT_KEY)
        self.configured_count = parse_count(raw)
        if (self._shape(), self.connection_count()) != before:
            log.info(
                "cluster hubs",
                extra={"hubs": sorted(self.hubs), "connection_count": self.connection_count()},
            )
            for callback in self._listeners:
                callback()

    def _shape(self) -> tuple[tuple[str, str, str], ...]:
        return tuple((h.id, h.public_addr, h.peer_addr) for h in self.hubs.values())

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception:
                log.exception("hub registration failed; will retry")
            await asyncio.sleep(BEAT_INTERVAL)

    async def leave(self) -> None:
        """A clean stop: drop this hub's record, so agents and peers stop using it."""
        self.leaving = True
        await self.storage.hubs.drop(self.hub_id)

    def peers(self) -> list[HubRecord]:
        """Every other live hub."""
        return [h for h in self.hubs.values() if h.id != self.hub_id]

    def connection_count(self) -> int:
        return effective_count(self.configured_count, len(self.hubs))

    def hub_list(self) -> HubList:
        """What agents on this hub are told: every live hub, this one included (a
        draining hub's GOAWAY tells its agents to avoid it for a while)."""
        hubs = dict(self.hubs)
        hubs[self.hub_id] = self.record()
        entries = sorted((h.id, h.public_addr) for h in hubs.values())
        try:
            return HubList(self.hub_id, tuple(entries), self.connection_count())
        except ValueError:  # a record agents could not use: leave it out, keep the rest
            usable = [e for e in entries if _usable(e)]
            return HubList(self.hub_id, tuple(usable), min(self.connection_count(), len(usable)))


def _usable(entry: tuple[str, str]) -> bool:
    try:
        HubList(entry[0], (entry,), 1)
    except ValueError:
        return False
    return True


def effective_count(configured: int | None, hubs: int) -> int:
    """Tunnels per agent: the setting, at most one per hub, else the default."""
    if configured is not None:
        return min(configured, max(1, hubs))
    return default_connection_count(hubs)


def parse_count(raw: str | None) -> int | None:
    """The stored setting, or None when unset, cleared or not a valid count."""
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if 1 <= value <= MAX_CONNECTION_COUNT else None
