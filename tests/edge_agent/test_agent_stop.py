"""A stop request (SIGTERM cancels the agent's task) ends the redial loop even when
something inside a dial swallowed the CancelledError."""

from __future__ import annotations

import asyncio
import contextlib

from localdevice import local_identity

from edge_agent.agent import EdgeAgent
from edge_agent.tunnel_slots import TunnelSlots

NODE = "00000000-0000-4000-8000-0000000000d1"


class SwallowingSlots(TunnelSlots):
    dials = 0

    async def run_once(self, slot: int = 0) -> None:
        self.dials += 1
        with contextlib.suppress(asyncio.CancelledError):  # as a library might
            await asyncio.sleep(0.05)
        raise OSError("cannot reach the hub")


async def test_a_cancel_swallowed_inside_a_dial_still_stops_the_agent() -> None:
    ident, _ = local_identity(NODE)
    agent = EdgeAgent(ident, {})
    slots = agent.slots = SwallowingSlots(agent, ident.hub, agent.limits, agent.backoff)
    task = asyncio.ensure_future(agent.run_forever())
    await asyncio.sleep(0.01)  # inside the first dial
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=5)
    assert task in done and task.cancelled(), f"still redialling after {slots.dials} dials"
