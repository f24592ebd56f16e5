"""The running hub's sign of life in its data dir, so ``tctl`` can tell a stale
"online" from a live one.

The nodes table's ``online`` flag is written by the hub (a tunnel came up, went
down) and cleared when it stops cleanly or starts. A hub killed with SIGKILL (or
a crashed host) clears nothing: the flags say "online" for tunnels that died
with it. So the hub touches :data:`ALIVE_FILE` every :data:`ALIVE_INTERVAL`
seconds while it runs and removes it when it stops; ``tctl nodes ls`` and
``tctl status`` show a node online only while the hub is running, that is, the
file is at most :data:`STALE_AFTER` seconds old (:func:`hub_running`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

from hub.backend import Node

#: Name of the sign-of-life file in the hub's data dir.
ALIVE_FILE = "hub.alive"
#: Seconds between touches of the file by a running hub.
ALIVE_INTERVAL = 1.0
#: A file older than this (seconds) is a hub that stopped without cleaning up;
#: generous against a busy event loop (a collector pause, a reconnect storm).
STALE_AFTER = 5.0


def alive_path(data_dir: Path) -> Path:
    return data_dir / ALIVE_FILE


def touch(path: Path) -> None:
    """Mark the hub alive now (an mtime update: no data written, fine on a full disk)."""
    path.touch()


async def keep_alive(path: Path, interval: float = ALIVE_INTERVAL) -> None:
    """Touch ``path`` every ``interval`` seconds until cancelled; errors are retried."""
    while True:
        with contextlib.suppress(OSError):
            touch(path)
        await asyncio.sleep(interval)


def stop(path: Path) -> None:
    """The hub stopped cleanly: no sign of life any more."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def hub_age(data_dir: Path, now: float) -> float | None:
    """Seconds since the hub last showed life, None if it never did or stopped cleanly."""
    try:
        return max(0.0, now - alive_path(data_dir).stat().st_mtime)
    except OSError:
        return None


def hub_running(data_dir: Path, now: float, stale_after: float = STALE_AFTER) -> bool:
    age = hub_age(data_dir, now)
    return age is not None and age <= stale_after


def as_seen(nodes: list[Node], data_dir: Path, now: float) -> tuple[list[Node], str]:
    """``nodes`` with "online" only while the hub runs, and a note for stderr ("" if
    none) when stored flags were overruled because it does not."""
    if hub_running(data_dir, now) or not any(n.online for n in nodes):
        return nodes, ""
    age = hub_age(data_dir, now)
    since = "" if age is None else f" (no sign of life for {age:.0f} s)"
    note = (
        f"tctl: the hub is not running{since}: every node is shown offline; "
        "start it with 'hub start'"
    )
    return [dataclasses.replace(n, online=False) for n in nodes], note


__all__ = [
    "ALIVE_FILE",
    "ALIVE_INTERVAL",
    "STALE_AFTER",
    "alive_path",
    "as_seen",
    "hub_age",
    "hub_running",
    "keep_alive",
    "stop",
    "touch",
]
