"""``edge-agent health``: is the agent running and its tunnel up (or down only briefly)?

The running agent keeps ``DATA/status.json`` current: whether the tunnel is
up, since when, and when the agent last wrote the file (it rewrites it on every
change and at least every :data:`REFRESH` seconds, so a hung agent goes stale).
``edge-agent health`` reads it and exits 0 when healthy, 1 with one line saying
what is wrong otherwise: the Docker ``HEALTHCHECK`` and any other supervisor
can run it. It imports nothing beyond the standard library.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from remoteler.fsutil import write_file_atomic

STATUS_FILE = "status.json"
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


def status_path(data_dir: Path) -> Path:
    return data_dir / STATUS_FILE


def write_status(data_dir: Path, status: Status) -> None:
    """Replace the status file atomically (it holds no secret: mode 0644)."""
    write_file_atomic(status_path(data_dir), json.dumps(asdict(status)).encode(), 0o644)


def read_status(data_dir: Path) -> Status | None:
    """The last status the agent wrote, or None if there is none or it is unreadable."""
    try:
        doc = json.loads(status_path(data_dir).read_text())
        return Status(
            tunnel_up=bool(doc["tunnel_up"]),
            since=float(doc["since"]),
            updated=float(doc["updated"]),
            pid=int(doc["pid"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verdict(status: Status | None, now: float, max_down: float, stale_after: float) -> str | None:
    """None if healthy, else one line saying what is wrong (pure: ``now`` is passed in)."""
    if status is None:
        return "no agent status: 'edge-agent start' is not running with this data directory"
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
                with contextlib.suppress(OSError):  # a full disk must not stop the agent
                    write_status(data_dir, status)
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
    return verdict(status, time.time(), max_down, stale_after)
