"""A node's second tunnel to the same hub (an agent keeping tunnels to several hubs
that landed twice on one, e.g. behind a load balancer or with ``--workers``) does not
evict the first while it carries sessions; a tunnel without sessions is replaced."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hubkit import Hub
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from remoteler.hubconn import ERROR_HEADER
from remoteler.protocol import TUNNEL_ALPN, TUNNEL_SUBPROTOCOL
from remoteler.wire.aio import Tunnel
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits


async def _dial(hub: Hub, creds: tuple[bytes, bytes]) -> tuple[Tunnel, asyncio.Task[None]]:
    ws = await connect(
        hub.url("/v1/tunnel?heartbeat=30&misses=3"),
        ssl=hub.tls(*creds, alpn=[TUNNEL_ALPN]),  # type: ignore[arg-type]
        compression=None,
        subprotocols=[TUNNEL_SUBPROTOCOL],  # type: ignore[list-item]
    )
    tunnel = Tunnel(ws, Connection(Role.DIALER, Limits(send_heartbeats=True)))
    return tunnel, asyncio.ensure_future(tunnel.run())


async def _registered(hub: Hub, name: str) -> Any:
    for _ in range(200):
        for live in hub.server.registry.live():
            return live
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} not registered")


async def test_a_busy_tunnel_is_kept_and_an_idle_one_replaced(hub: Hub) -> None:
    creds = await hub.node_creds("truck-1")
    first, first_task = await _dial(hub, creds)
    live = await _registered(hub, "truck-1")
    live.session_started()  # a user's session relayed over it
    with pytest.raises(InvalidStatus) as refused:
        await _dial(hub, creds)
    assert refused.value.response.status_code == 409
    assert refused.value.response.headers[ERROR_HEADER] == "tunnel_held"
    assert b"dial another hub" in (refused.value.response.body or b"")
    assert hub.server.registry.get(live.node_id) is live and not first.closed.is_set()

    live.session_ended()  # idle now: a new tunnel takes over (the old may be a dead link)
    second, second_task = await _dial(hub, creds)
    async with asyncio.timeout(10):
        await first.closed.wait()
    assert hub.server.registry.get(live.node_id).tunnel is not live.tunnel
    await second.close()
    await asyncio.gather(first_task, second_task, return_exceptions=True)
