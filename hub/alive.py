"""The running hub's sign of life in its data dir, so ``tctl`` can tell a stale
"online" from a live one.

The nodes table's ``online`` flag is written by the hub (a tunnel came up, went
down) and cleared when it stops cleanly or starts. A hub killed with SIGKILL (or
a crashed host) clears nothing: the flags say "online" for tunnels that died
with it. So the running hub holds a shared ``flock`` on :data:`ALIVE_FILE`
(:func:`hold`; the kernel drops it the moment the process dies, however it
dies), touches the file every :data:`ALIVE_INTERVAL` seconds (for the "no sign
of life for N s" note) and removes it when it stops. ``tctl nodes ls`` and
``tctl status`` show a node online only while the hub is running, that is, the
lock is held (:func:`hub_running`): no wall clock is involved, so a clock set back
after a crash cannot make a dead hub look alive. Only if the file cannot be
opened to test the lock (permissions) is its age used instead: at most
:data:`STALE_AFTER` seconds old, and not from the future.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
from pathlib import Path

from hub.storage.api import Node

#: Name of the sign-of-life file in the hub's data dir.
ALIVE_FILE = "hub.alive"
#: Seconds between touches of the file by a running hub.
ALIVE_INTERVAL = 1.0
#: Used only when the lock cannot be tested: a file older than this (seconds), or
#: this much in the future, is a hub that stopped without cleaning up; generous
#: against a busy event loop (a collector pause, a reconnect storm).
STALE_AFTER = 5.0


def alive_path(data_dir: Path) -> Path:
    return data_dir / ALIVE_FILE


def hold(path: Path) -> int:
    """The hub is running: create ``path`` and hold a shared lock on it until the
    returned descriptor is closed (:func:`stop`) or the process dies.

    On a file system without locks (some network or FUSE ones) the hub runs all the
    same: tctl's test of the lock fails there too, and it judges by the mtime."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def touch(path: Path) -> None:
    """Mark the hub alive now (an mtime update: no data written, fine on a full disk)."""
    path.touch()


async def keep_alive(path: Path, interval: float = ALIVE_INTERVAL) -> None:
    """Touch ``path`` every ``interval`` seconds until cancelled; errors are retried."""
    while True:
        with contextlib.suppress(OSError):
            touch(path)
        await asyncio.sleep(interval)


def stop(path: Path, fd: int | None = None) -> None:
    """The hub stopped cleanly: no sign of life any more (and the lock from
    :func:`hold`, if given, released)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def lock_held(path: Path) -> bool | None:
    """True while a hub holds :func:`hold`'s lock on ``path``, False if none does (or
    there is no file), None if the file cannot be opened to tell."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released by the close below
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)
    return False


def hub_age(data_dir: Path, now: float) -> float | None:
    """Seconds since the hub last showed life, None if it never did or stopped cleanly."""
    try:
        return max(0.0, now - alive_path(data_dir).stat().st_mtime)
    except OSError:
        return None


def hub_running(data_dir: Path, now: float, stale_after: float = STALE_AFTER) -> bool:
    held = lock_held(alive_path(data_dir))
    if held is not None:
        return held
    try:  # the lock cannot be tested: judge by the file's age, a future one included
        age = now - alive_path(data_dir).stat().st_mtime
    except OSError:
        return False
    return -stale_after <= age <= stale_after


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
    "hold",
    "hub_age",
    "hub_running",
    "keep_alive",
    "lock_held",
    "stop",
    "touch",
]
