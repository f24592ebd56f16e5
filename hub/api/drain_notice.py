"""What users hear while the hub drains before a restart (docs/tunnels.md, "Hub
restarts and silent links").

* Each open ``/v1/connect`` session whose client asked for notices
  (:data:`remoteler.notice.NOTICE_PARAM`) gets one text message when the drain
  starts: :func:`session_notice`, with the seconds until the hub ends it, and
  :data:`SESSION_CUT` if it is still open when that time is up.
* A new session (or tunnel) during the drain is refused with HTTP 503, a
  ``Retry-After`` header and :func:`restart_refusal` as the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

log = logging.getLogger("remoteler.hub.proxy")

#: A notice that the session's client does not take within this many seconds is
#: given up (its relay may be stalled; the drain must not wait on it).
SEND_TIMEOUT = 2.0


#: The last line of a session still open when the drain's grace is over.
SESSION_CUT = "hub restarting: this session ends now; reconnect with the same command"


def seconds_left(deadline: float, now: float) -> int:
    """Whole seconds from ``now`` to ``deadline``, rounded up, at least 1."""
    return max(1, math.ceil(deadline - now))


def session_notice(seconds: int) -> str:
    return f"hub restarting: this session ends in {seconds} s; reconnect with the same command"


def restart_refusal(seconds: int) -> str:
    return f"hub is restarting, try again in {seconds} s"


class Notices:
    """The open relays whose clients take notices; :meth:`announce` tells them all."""

    def __init__(self) -> None:
        self._open: set[Any] = set()

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, ws: object) -> bool:
        return ws in self._open

    def add(self, ws: Any) -> None:
        self._open.add(ws)

    def discard(self, ws: Any) -> None:
        self._open.discard(ws)

    async def announce(self, text: str) -> int:
        """Send ``text`` to every open relay at once; return how many took it in time."""
        sent = await asyncio.gather(*(self.tell(ws, text) for ws in list(self._open)))
        return sum(sent)

    @staticmethod
    async def tell(ws: Any, text: str) -> bool:
        """Send ``text`` to one relay; False if it did not take it in time (or is gone)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SEND_TIMEOUT):
                await ws.send(text)
                return True
        return False

    async def announce_at(self, deadline: float, text: str) -> int:
        """:meth:`announce` ``text`` at ``deadline`` (``time.monotonic()``) to the relays
        open then."""
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        return await self.announce(text)


__all__ = ["SESSION_CUT", "Notices", "restart_refusal", "seconds_left", "session_notice"]
