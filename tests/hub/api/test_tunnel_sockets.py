"""Tunnel sockets at both ends hold little unsent data: TCP_NOTSENT_LOWAT, small buffers.

A real hub on loopback and an agent's side of a real TLS tunnel (FakeAgent: the
same Tunnel the edge agent runs); the options are read back from the kernel.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from hubkit import FakeAgent, Hub

from remoteler.linktune import NOTSENT_LOWAT, TCP_NOTSENT_LOWAT, apply_budget, notsent_lowat
from remoteler.wire.aio import ChannelRequest


class Idle(FakeAgent):
    async def on_channel(self, request: ChannelRequest) -> None:
        request.reject(1, "no")  # type: ignore[arg-type]


async def _live(hub: Hub) -> Any:
    for _ in range(200):
        if live := hub.server.registry.live():
            await asyncio.sleep(0.05)  # its writer task has started
            return live[0]
        await asyncio.sleep(0.02)
    raise AssertionError("the hub did not register the tunnel")


def _raw(transport: Any) -> Any:
    return transport._ssl_protocol._transport


async def test_notsent_lowat_on_the_agents_and_the_hubs_tunnel_socket(hub: Hub) -> None:
    agent = Idle()
    await agent.dial(hub, "lowat")
    try:
        assert agent.tunnel is not None
        live = await _live(hub)
        for tunnel in (agent.tunnel, live.tunnel):
            sock = tunnel.get_extra_info("socket")
            assert sock.family == socket.AF_INET
            # a new tunnel starts cautious (the pacer's first budget), at most the default
            expected = min(tunnel.pacer.budget or NOTSENT_LOWAT, NOTSENT_LOWAT)
            assert sock.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT) == expected > 0
            # under TLS, the plain transport's buffer is bounded too (asyncio: 64 KiB)
            assert _raw(tunnel._ws.transport).get_write_buffer_limits()[1] <= NOTSENT_LOWAT
    finally:
        await agent.close()


async def test_a_slow_links_budget_shrinks_every_buffer_and_a_fast_one_restores_them(
    hub: Hub,
) -> None:
    agent = Idle()
    await agent.dial(hub, "budget")
    try:
        assert agent.tunnel is not None
        transport = agent.tunnel._ws.transport  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        apply_budget(transport, 2048)
        assert notsent_lowat(sock) == 2048
        assert transport.get_write_buffer_limits() == (512, 2048)
        assert _raw(transport).get_write_buffer_limits() == (512, 2048)
        apply_budget(transport, None)
        assert notsent_lowat(sock) == NOTSENT_LOWAT
        assert _raw(transport).get_write_buffer_limits()[1] == 64 * 1024
        apply_budget(None, 1)  # no transport (an in-memory link): nothing to do
    finally:
        await agent.close()
