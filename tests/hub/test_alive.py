"""hub/alive.py: the hub's sign of life, and tctl's view of "online" without it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hub import alive
from hub.alive import (
    ALIVE_FILE,
    STALE_AFTER,
    alive_path,
    as_seen,
    hold,
    hub_age,
    hub_running,
    keep_alive,
    lock_held,
    stop,
)
from hub.storage.api import Node

#: A process that does what a running hub does with the file, then waits to be killed.
HUB_LIKE = """
import sys, time
from pathlib import Path
from hub.alive import hold
path = Path(sys.argv[1])
hold(path)
print("holding", flush=True)
time.sleep(60)
"""


def _node(name: str, online: bool) -> Node:
    return Node(id=f"id-{name}", name=name, labels={}, online=online, last_seen=1.0)


async def test_a_running_hub_keeps_the_file_fresh(tmp_path: Path) -> None:
    path = alive_path(tmp_path)
    assert path.name == ALIVE_FILE
    fd = hold(path)
    task = asyncio.ensure_future(keep_alive(path, interval=0.05))
    try:
        await asyncio.sleep(0.1)
        os.utime(path, (1.0, 1.0))  # as if written long ago
        await asyncio.sleep(0.15)
        assert hub_age(tmp_path, time.time()) < 1.0  # type: ignore[operator]
        assert hub_running(tmp_path, time.time())
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    stop(path, fd)
    assert hub_age(tmp_path, time.time()) is None
    assert not hub_running(tmp_path, time.time())
    stop(path)  # twice is fine


def test_a_killed_hub_is_not_running_at_once_whatever_the_clock(tmp_path: Path) -> None:
    """SIGKILL leaves a fresh file behind; a clock set back afterwards even leaves it
    an hour in the future. Neither makes the dead hub look alive."""
    path = alive_path(tmp_path)
    hub = subprocess.Popen(
        [sys.executable, "-c", HUB_LIKE, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert hub.stdout is not None and hub.stdout.readline() == "holding\n"
        assert lock_held(path) is True
        assert hub_running(tmp_path, time.time())
        assert hub_running(tmp_path, time.time() + 3600)  # the clock jumped: still alive
    finally:
        hub.send_signal(signal.SIGKILL)
        hub.wait(timeout=10)
    ahead = time.time() + 3600.0
    os.utime(path, (ahead, ahead))  # touched just before the kill, then the clock went back
    assert lock_held(path) is False
    assert not hub_running(tmp_path, time.time())  # at once, not STALE_AFTER later
    shown, note = as_seen([_node("a", True)], tmp_path, time.time())
    assert [n.online for n in shown] == [False]
    assert note.startswith("tctl: the hub is not running")


def test_without_the_lock_the_age_decides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file tctl cannot open (another user's hub; root here opens anything, hence
    the patch): its age decides, and one from the future is stale too."""
    assert not hub_running(tmp_path, time.time())
    assert lock_held(alive_path(tmp_path)) is False  # no file
    path = alive_path(tmp_path)
    path.touch()
    now = path.stat().st_mtime
    monkeypatch.setattr(alive, "lock_held", lambda _path: None)
    assert hub_running(tmp_path, now + STALE_AFTER)
    assert not hub_running(tmp_path, now + STALE_AFTER + 0.1)
    assert hub_running(tmp_path, now - STALE_AFTER)
    assert not hub_running(tmp_path, now - 3600.0)  # written an hour "from now": stale
    assert hub_age(tmp_path, now + 12.0) == 12.0


def test_stored_online_flags_are_overruled_while_the_hub_is_down(tmp_path: Path) -> None:
    nodes = [_node("a", True), _node("b", False)]
    shown, note = as_seen(nodes, tmp_path, time.time())  # never started / stopped cleanly
    assert [n.online for n in shown] == [False, False]
    assert note.startswith("tctl: the hub is not running: every node is shown offline")
    path = alive_path(tmp_path)
    fd = hold(path)
    then = path.stat().st_mtime
    assert as_seen(nodes, tmp_path, then + 1.0) == (nodes, "")  # running: as stored
    os.close(fd)  # killed: the kernel drops the lock, the file stays
    shown, note = as_seen(nodes, tmp_path, then + 40.0)  # 40 s ago
    assert [n.online for n in shown] == [False, False]
    assert "(no sign of life for 40 s)" in note
    # Nothing online: nothing to overrule, no note.
    assert as_seen([_node("b", False)], tmp_path, then + 40.0)[1] == ""


def test_a_file_system_without_locks_falls_back_to_the_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flock fails there (ENOLCK): the hub still starts, tctl judges by the mtime."""

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    path = alive_path(tmp_path)
    fd = hold(path)  # no error: the hub starts
    try:
        assert lock_held(path) is None
        now = path.stat().st_mtime
        assert hub_running(tmp_path, now + 1.0)
        assert not hub_running(tmp_path, now + STALE_AFTER + 1.0)
    finally:
        stop(path, fd)
