"""The agent's side of the ``hubs`` channel: the cluster's hub list, pushed by a hub.

As with the lock set (edge_agent/locks.py): read the body to EOF, take it, answer
``ok`` and close. A malformed or oversized list is logged and not answered, so
the hub tries again later (docs/wire-protocol.md, "The hubs channel").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from remoteler.hublist import MAX_BODY, HubList, decode

__all__ = ["serve_hubs_channel"]

log = logging.getLogger("remoteler.agent.hubs")


async def serve_hubs_channel(channel: Any, take: Callable[[HubList], None]) -> HubList | None:
    """Read one hub list, hand it to ``take``, answer ``ok``; the list, or None if bad."""
    try:
        data = bytearray()
        while chunk := await channel.read(65536):
            data += chunk
            if len(data) > MAX_BODY:
                log.warning("hub list too large; ignored")
                return None
        try:
            hubs = decode(bytes(data))
        except ValueError as exc:
            log.warning("bad hub list from the hub: %s", exc)
            return None
        take(hubs)
        channel.write(b"ok")
        channel.write_eof()
        return hubs
    finally:
        channel.close()
