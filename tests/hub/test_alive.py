"""hub/alive.py: the hub's sign of life, and tctl's view of "online" without it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path

from hub.alive import (
    ALIVE_FILE,
    STALE_AFTER,
    alive_path,
    as_seen,
    hub_age,
    hub_running,
    keep_alive,
    stop,
)
from hub.backend import Node


def _node(name: str, online: bool) -> Node:
    return Node(id=f"id-{name}", name=name, labels={}, online=online, last_seen=1.0)


async def test_a_running_hub_keeps_the_file_fresh(tmp_path: Path) -> None:
    path = alive_path(tmp_path)
    assert path.name == ALIVE_FILE
    task = asyncio.ensure_future(keep_alive(path, interval=0.05))
    try:
        await asyncio.sleep(0.1)
        os.utime(path, (1.0, 1.0))  # as if written long ago
        await asyncio.sleep(0.15)
        assert hub_running(tmp_path, time.time())
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    stop(path)
    assert hub_age(tmp_path, time.time()) is None
    stop(path)  # twice is fine


def test_stale_or_missing_file_means_not_running(tmp_path: Path) -> None:
    assert not hub_running(tmp_path, time.time())
    path = alive_path(tmp_path)
    path.touch()
    now = path.stat().st_mtime
    assert hub_running(tmp_path, now + STALE_AFTER)
    assert not hub_running(tmp_path, now + STALE_AFTER + 0.1)
    assert hub_age(tmp_path, now + 12.0) == 12.0


def test_stored_online_flags_are_overruled_while_the_hub_is_down(tmp_path: Path) -> None:
    nodes = [_node("a", True), _node("b", False)]
    shown, note = as_seen(nodes, tmp_path, time.time())  # never started / stopped cleanly
    assert [n.online for n in shown] == [False, False]
    assert note.startswith("tctl: the hub is not running: every node is shown offline")
    path = alive_path(tmp_path)
    path.touch()
    then = path.stat().st_mtime
    assert as_seen(nodes, tmp_path, then + 1.0) == (nodes, "")  # running: as stored
    shown, note = as_seen(nodes, tmp_path, then + 40.0)  # killed 40 s ago
    assert [n.online for n in shown] == [False, False]
    assert "(no sign of life for 40 s)" in note
    # Nothing online: nothing to overrule, no note.
    assert as_seen([_node("b", False)], tmp_path, then + 40.0)[1] == ""
