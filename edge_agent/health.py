"""``edge-agent health``: is the agent running and its tunnel up (or down only briefly)?

The running agent keeps ``DATA/status.json`` current: whether the tunnel is
up, since when, and when the agent last wrote the file (it rewrites it on every
change and at least every :data:`REFRESH` seconds, so a hung agent goes stale).
``edge-agent health`` reads it and exits 0 when healthy, 1 with one line saying
what is wrong otherwise: the Docker ``HEALTHCHECK`` and any other supervisor
can run it. It imports nothing beyond the standard library.

On a full disk the atomic rewrite (a new file, then a rename) fails; the agent
then overwrites the file in place (it is always written padded to
:data:`STATUS_SIZE` bytes, so that needs no new block) with ``disk_full`` set,
and ``edge-agent health`` says the agent is running but cannot write its status
(exit 1) instead of calling it stopped or hung once the file goes stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from remoteler.fsutil import write_file_atomic

STATUS_FILE = "status.json"
#: the file is padded with spaces to this size, so it can be rewritten in place
STATUS_SIZE = 512
#: below this many free bytes the disk holding the data dir counts as full
DISK_FULL_BELOW = 64 * 1024
#: the agent rewrites the file at least this often (seconds)
REFRESH = 60.0
#: how often the agent looks at its tunnel (seconds) ...
POLL = 2.0
#: ... and for the first seconds after it went down (or the agent started), so a
#: status reader (the health check, bench agent_size) sees the tunnel come up at once
FAST_POLL, FAST_FOR = 0.1, 10.0


@dataclass(frozen=True)
class Status:
    #: the tunnel to the hub is up
    tunnel_up: bool
    #: wall-clock time the tunnel went up or down (or the agent started)
    since: float
    #: wall-clock time the agent last wrote the file
    updated: float
    #: the agent's process id
    pid: int
    #: the last atomic rewrite failed for want of space: this copy was written in place
    disk_full: bool = False


def status_path(data_dir: Path) -> Path:
    return data_dir / STATUS_FILE


def _encode(status: Status, size: int = STATUS_SIZE) -> bytes:
    """The JSON, padded with spaces to at least ``size`` bytes (a newline last)."""
    return json.dumps(asdict(status)).encode().ljust(size - 1) + b"\n"


def write_status(data_dir: Path, status: Status) -> None:
    """Replace the status file atomically (it holds no secret: mode 0644)."""
    write_file_atomic(status_path(data_dir), _encode(status), 0o644)


def write_status_in_place(data_dir: Path, status: Status) -> None:
    """Overwrite the existing status file without allocating (for a full disk); raises
    OSError if there is none or it is too short to hold ``status``."""
    fd = os.open(status_path(data_dir), os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        size = os.fstat(fd).st_size
        data = _encode(status, size)  # padded over all of a longer file's old tail
        if size < len(data):
            raise OSError(f"{STATUS_FILE} is too short to be rewritten in place")
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


def disk_free(data_dir: Path) -> int | None:
    """Bytes free for an unprivileged writer on the data dir's file system, or None."""
    try:
        st = os.statvfs(data_dir)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def read_status(data_dir: Path) -> Status | None:
    """The last status the agent wrote, or None if there is none or it is unreadable."""
    try:
        doc = json.loads(status_path(data_dir).read_text())
        return Status(
            tunnel_up=bool(doc["tunnel_up"]),
            since=float(doc["since"]),
            updated=float(doc["updated"]),
            pid=int(doc["pid"]),
            disk_full=bool(doc.get("disk_full", False)),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verdict(status: Status | None, now: float, max_down: float, stale_after: float) -> str | None:
    """None if healthy, else one line saying what is wrong (pure: ``now`` is passed in)."""
    if status is None:
        return "no agent status: 'edge-agent start' is not running with this data directory"
    if status.disk_full:
        return (
            f"the agent (process {status.pid}) is running, but its status file is not "
            "writable: the disk holding its data directory is full; free space there "
            "(audit events and sessions need it too)"
        )
    if now - status.updated > stale_after:
        return (
            f"the agent has not updated its status for {now - status.updated:.0f} s "
            f"(process {status.pid}); it is stopped or hung: restart it"
        )
    if not status.tunnel_up and now - status.since > max_down:
        return (
            f"the tunnel to the hub has been down for {now - status.since:.0f} s "
            f"(over {max_down:g} s); check the network and the agent's log"
        )
    return None


class StatusWriter:
    """Decides when the status file must be rewritten (no I/O; time is passed in)."""

    def __init__(self, now: float, refresh: float = REFRESH) -> None:
        self.refresh = refresh
        self.up = False
        self.since = now
        self.written: float | None = None

    def observe(self, up: bool, now: float) -> Status | None:
        """The status to write now, or None if the file is still current."""
        changed = up != self.up
        if changed:
            self.up, self.since = up, now
        if changed or self.written is None or now - self.written >= self.refresh:
            self.written = now
            return Status(tunnel_up=up, since=self.since, updated=now, pid=os.getpid())
        return None


async def keep_status(data_dir: Path, tunnel_up: Callable[[], bool]) -> None:
    """Run for as long as the agent does, keeping ``DATA/status.json`` current."""
    writer = StatusWriter(time.time())
    try:
        while True:
            status = writer.observe(tunnel_up(), time.time())
            if status is not None:
                try:
                    write_status(data_dir, status)
                except OSError:  # a full disk must not stop the agent
                    with contextlib.suppress(OSError):
                        write_status_in_place(data_dir, replace(status, disk_full=True))
                    writer.written = None  # try the atomic write again on the next poll
            recent = not writer.up and time.time() - writer.since < FAST_FOR
            await asyncio.sleep(FAST_POLL if recent else POLL)
    finally:  # a stopped agent is unhealthy at once, not after stale_after
        with contextlib.suppress(OSError):
            status_path(data_dir).unlink()


def check(data_dir: Path, max_down: float, stale_after: float) -> str | None:
    """What ``edge-agent health`` reports: None if healthy, else the problem."""
    status = read_status(data_dir)
    if status is not None:
        try:
            os.kill(status.pid, 0)
        except ProcessLookupError:
            return f"the agent (process {status.pid}) is gone; restart it"
        except PermissionError:
            pass  # alive, another user's
    problem = verdict(status, time.time(), max_down, stale_after)
    free = disk_free(data_dir)
    if problem is not None and free is not None and free < DISK_FULL_BELOW:
        if status is not None and not status.disk_full:  # alive, as checked above
            return (
                f"the agent (process {status.pid}) is running, but its status file is not "
                f"writable: the disk holding its data directory is full ({free} bytes "
                "free); free space there"
            )
        if status is None:
            problem += f" (and its disk is full, {free} bytes free: free space there first)"
    return problem
