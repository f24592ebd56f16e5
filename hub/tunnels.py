"""The proxy's inventory of live agent tunnels, and heartbeat bookkeeping."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.backend import Backend
from remoteler.addr import valid_labels
from remoteler.wire.aio import Tunnel

log = logging.getLogger("remoteler.hub.tunnels")


@dataclass
class LiveNode:
    node_id: str
    tunnel: Tunnel
    connected_at: float
    last_seen: float
    labels: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    status: dict[str, Any] = field(default_factory=dict)
    dirty: bool = False
    #: labels from the join token; the agent cannot override them
    token_labels: Mapping[str, str] = field(default_factory=dict)


class TunnelRegistry:
    """node id -> live tunnel; persists online state and heartbeats in batches."""

    def __init__(self, backend: Backend, flush_interval: float = 5.0) -> None:
        self.backend = backend
        self.flush_interval = flush_interval
        self._live: dict[str, LiveNode] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def get(self, node_id: str) -> LiveNode | None:
        return self._live.get(node_id)

    def __len__(self) -> int:
        return len(self._live)

    async def register(self, node_id: str, tunnel: Tunnel) -> LiveNode:
        old = self._live.get(node_id)
        now = time.time()
        node = await self.backend.get_node(node_id)
        token_labels = dict(node.token_labels) if node else {}
        live = LiveNode(node_id, tunnel, now, now, token_labels=token_labels)
        self._live[node_id] = live
        if old is not None:
            log.info("tunnel replaced by a new connection", extra={"node_id": node_id})
            task = asyncio.ensure_future(old.tunnel.close(reason="replaced by a newer tunnel"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        await self.backend.set_node_online(node_id, True, now)
        return live

    async def unregister(self, node_id: str, tunnel: Tunnel) -> None:
        live = self._live.get(node_id)
        if live is None or live.tunnel is not tunnel:
            return  # a newer tunnel took over
        del self._live[node_id]
        await self.backend.set_node_online(node_id, False, time.time())

    def heartbeat(self, node_id: str, payload: dict[str, Any] | None) -> None:
        live = self._live.get(node_id)
        if live is None:
            return
        live.last_seen = time.time()
        live.dirty = True
        if isinstance(payload, dict):
            labels = payload.get("labels")
            if valid_labels(labels):
                assert isinstance(labels, dict)
                live.labels = {**labels, **live.token_labels}
            version = payload.get("version")
            if isinstance(version, str):
                live.version = version[:64]
            live.status = {k: v for k, v in payload.items() if k not in ("labels",)}

    async def flush(self) -> None:
        beats = []
        for live in self._live.values():
            if live.dirty:
                live.dirty = False
                beats.append((live.node_id, live.last_seen, live.labels, live.version))
        if not beats:
            return
        for node_id in await self.backend.update_heartbeats(beats):
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
