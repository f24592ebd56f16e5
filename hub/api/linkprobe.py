"""A quiet tunnel is probed before a user's session is routed over it.

An agent's link can freeze without closing (a NAT that forgot the mapping, a dead
radio): the hub learns it only when the heartbeat deadline passes (interval x
misses, 120 s with the agent's defaults). Until then a ``tsh ssh`` to that node
used to wait the full 15 s channel-open timeout and fail vaguely. Now, when
nothing has arrived on the tunnel for :func:`suspect_after` seconds, the hub
PINGs it and waits :data:`PROBE_TIMEOUT` for anything from the agent; if nothing
comes, the user hears at once that the node is not answering, for how long the
link has been silent, and when the hub will mark it offline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from remoteler.wire.aio import Tunnel

#: Seconds a probe waits for the agent's answer (any message counts).
PROBE_TIMEOUT = 2.0


def suspect_after(interval: float, misses: int) -> float | None:
    """Seconds of silence after which a tunnel is probed before use; None: never.

    Two heartbeat intervals when the tunnel tolerates three or more missed
    heartbeats; one when it tolerates two (the agent's default, 60 s x 2: after two
    intervals the tunnel is already dropped). A tunnel that tolerates one miss is
    dropped before it could be suspect; no heartbeats, no expectation of traffic.
    """
    if interval <= 0 or misses < 2:
        return None
    return interval * min(2, misses - 1)


@dataclass(frozen=True, slots=True)
class Silent:
    """A tunnel that did not answer its probe."""

    silence: float
    """Seconds since the agent last sent anything."""
    offline_at: float
    """Wall-clock time at which the heartbeat deadline drops the tunnel."""


async def check_link(
    tunnel: Tunnel, timeout: float = PROBE_TIMEOUT, wall: Callable[[], float] = time.time
) -> Silent | None:
    """None if ``tunnel`` is live (recent traffic, or it answered a probe), else how
    long it has been silent and when it will be marked offline."""
    limits = tunnel.limits
    after = suspect_after(limits.heartbeat_interval, limits.allowed_misses)
    if after is None or tunnel.silence <= after:
        return None
    if await tunnel.probe(timeout):
        return None
    silence = tunnel.silence
    left = limits.heartbeat_interval * limits.allowed_misses - silence
    return Silent(silence, wall() + max(0.0, left))


def not_answering(name: str, silent: Silent) -> str:
    """The user's line for a node whose tunnel did not answer its probe."""
    # named: the user reading it may be in another time zone than the hub
    when = time.strftime("%H:%M:%S %Z", time.localtime(silent.offline_at))
    return (
        f"{name} is not answering (link silent for {silent.silence:.0f} s); "
        f"it will be marked offline at {when}; try again once it reconnects"
    )


__all__ = ["PROBE_TIMEOUT", "Silent", "check_link", "not_answering", "suspect_after"]
