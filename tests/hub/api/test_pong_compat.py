"""Wire compatibility of the hub's time in PONGs (docs/wire-protocol.md
"Heartbeats"): a real hub, raw tunnel frames over real TLS websockets. An agent
that did not ask (``clock=1``: every agent older than the clock-skew feature)
gets the 2-item PONG its decoder requires; one that asked gets the hub's time."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgpack
from hubkit import running_hub
from websockets.asyncio.client import connect

from remoteler.protocol import TUNNEL_ALPN, TUNNEL_SUBPROTOCOL
from remoteler.wire.frames import FrameType, PingFrame, encode_frame


async def test_three_item_pong_only_to_agents_that_asked(tmp_path: Path) -> None:
    async with running_hub(tmp_path) as hub:
        pongs: dict[str, list[object]] = {}
        for query in ("", "?clock=1", "?clock=0", "?clock=1&clock=1"):
            creds = await hub.node_creds(f"node{len(pongs)}")
            async with connect(
                hub.url("/v1/tunnel" + query),
                ssl=hub.tls(*creds, alpn=[TUNNEL_ALPN]),
                compression=None,
                subprotocols=[TUNNEL_SUBPROTOCOL],  # type: ignore[list-item]
                open_timeout=10,
            ) as ws:
                await ws.send(encode_frame(PingFrame(7, None)))
                async with asyncio.timeout(10):
                    while True:
                        items = msgpack.unpackb(await ws.recv())
                        if items[0] == FrameType.PONG:
                            pongs[query] = items
                            break
        assert pongs[""] == [FrameType.PONG, 7]  # an old agent: exactly as before
        assert pongs["?clock=0"] == [FrameType.PONG, 7]
        assert pongs["?clock=1&clock=1"] == [FrameType.PONG, 7]  # only the one form asks
        kind, seq, stamp = pongs["?clock=1"]
        assert (kind, seq) == (FrameType.PONG, 7) and abs(stamp - time.time()) < 60
