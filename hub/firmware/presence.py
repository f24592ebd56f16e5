"""Which roll-out nodes are offline, and what to do about an offline canary (sans-I/O).

The orchestrator (:mod:`hub.firmware.rollouts`) calls :func:`plan` each tick with the
roll-out's nodes, which of them hold a tunnel now, when each offline one was
last seen and the wall clock; it applies the actions returned:

* a ``pending`` or ``transferring`` node with no tunnel (and no transfer
  running) shows as ``offline`` with ``offline since <last seen>``
  (:class:`MarkOffline`), and back as ``pending`` once it connects
  (:class:`MarkOnline`); a node past the transfer (``staging`` to
  ``health-check``, ``restarting``) keeps its state: the device goes on by
  itself and reports when it is back;
* a canary offline for longer than the roll-out's ``canary_timeout`` (counted
  from its last heartbeat, the roll-out's start or the hub's start, whichever
  is latest) is replaced by a pending, online non-canary
  (:class:`ReplaceCanary`); with none to take its place the roll-out stops,
  saying why (:class:`Stop`). A canary
  that went offline past the transfer (``staging`` ... ``restarting``) is never
  replaced: it may not have come back from the new firmware, so the roll-out
  stops.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from hub.storage.api import Rollout, RolloutNode
from remoteler.textfmt import fmt_time

__all__ = [
    "OFFLINE",
    "WAITING",
    "MarkOffline",
    "MarkOnline",
    "ReplaceCanary",
    "Stop",
    "offline_detail",
    "plan",
]

#: The state a roll-out shows for a node without a tunnel (not an agent state).
OFFLINE = "offline"
#: States an offline node is shown as ``offline`` from (the hub waits on it for these).
WAITING = frozenset({"pending", "transferring"})


@dataclass(frozen=True)
class MarkOffline:
    """Show ``node`` as offline."""

    node: RolloutNode
    """The node, as stored."""
    detail: str
    """``offline since ...``."""


@dataclass(frozen=True)
class MarkOnline:
    """``node`` connected again: back to ``pending`` (offered in its wave)."""

    node: RolloutNode
    """The node, as stored."""


@dataclass(frozen=True)
class ReplaceCanary:
    """``new`` becomes a canary in place of the offline ``old``."""

    old: RolloutNode
    """The offline canary."""
    new: RolloutNode
    """A pending, online non-canary."""
    detail: str
    """What ``old`` shows from now on."""


@dataclass(frozen=True)
class Stop:
    """Stop the roll-out: an offline canary and no node to replace it."""

    reason: str
    """One line for ``tctl firmware status`` and the audit event."""


Action = MarkOffline | MarkOnline | ReplaceCanary | Stop


def offline_detail(last_seen: float | None) -> str:
    """``offline since 2026-12-07 03:12:00`` (or ``offline, never connected``)."""
    return f"offline since {fmt_time(last_seen)}" if last_seen else "offline, never connected"


def _duration(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def plan(
    rollout: Rollout,
    nodes: list[RolloutNode],
    online: Collection[str],
    busy: Collection[str],
    last_seen: Mapping[str, float | None],
    now: float,
    watching_since: float = 0.0,
) -> list[Action]:
    """The actions for this tick.

    ``online``: node ids holding a tunnel now; ``busy``: node ids with a transfer
    running (left alone); ``last_seen``: wall-clock last heartbeat of each offline
    node (absent or None: never); ``now``: wall clock (``time.time()``);
    ``watching_since``: when this hub began watching the roll-out (its start): a
    canary's timeout never counts the hub's own downtime, when no agent could
    connect to it.
    """
    actions: list[Action] = []
    offline: list[RolloutNode] = []
    for node in nodes:
        if node.final or node.node_id in busy:
            continue
        if node.node_id in online:
            if node.state == OFFLINE:
                actions.append(MarkOnline(node))
            continue
        offline.append(node)
        if node.state in WAITING:
            actions.append(MarkOffline(node, offline_detail(last_seen.get(node.node_id))))
    spare = [
        n
        for n in nodes
        if not n.canary and n.state == "pending" and n.node_id in online and n.node_id not in busy
    ]
    for node in offline:
        if not node.canary:
            continue
        seen = last_seen.get(node.node_id)
        since = max(rollout.created, seen or rollout.created, watching_since)
        if now - since < rollout.canary_timeout:
            continue
        detail = offline_detail(seen)
        waited = _duration(rollout.canary_timeout)
        if node.state not in WAITING and node.state != OFFLINE:
            # It went down past the transfer (staging ... restarting): it may not have
            # come back from the new firmware. That is the canary's answer; another
            # node in its place would hide it and let the roll-out go on.
            actions.append(
                Stop(
                    f"canary {node.node_name} {detail} while {node.state}, more than "
                    f"--canary-timeout {waited}: it may not have come back from the new "
                    "firmware; check the device"
                )
            )
            break
        if spare:
            new = spare.pop(0)
            actions.append(
                ReplaceCanary(node, new, f"{detail}; replaced as canary by {new.node_name}")
            )
            continue
        actions.append(
            Stop(
                f"canary {node.node_name} {detail}, more than --canary-timeout {waited}, and "
                "no other online node to replace it: bring it online and push again"
            )
        )
        break
    return actions
