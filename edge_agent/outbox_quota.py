"""The outbox's disk arithmetic: a reserve of free space, session admission (no I/O).

The outbox never lets recordings or new sessions use the last :func:`reserve_bytes`
of the file system holding it: that reserve is kept for what must always be
written once a session has started (its ``exec``/``session.end`` events, an
``audit.dropped`` count) and for the drain (deleting acked events and
checkpointing the WAL need a few pages too).

Free space comes from ``statvfs`` (``f_bavail``: what an unprivileged writer may
use), taken by the caller and passed in as a :class:`DiskRoom`; the WAL's size is
part of what the outbox holds (it counts in the quota), so a session is admitted
only if its start, end and a minimum of recording fit in both the quota and the
disk outside the reserve:

``refuse-sessions``
    Admitted only with room for ``START + END + MIN_RECORDING`` outside the reserve
    and under the quota; otherwise refused before anything runs.
``drop-recordings-first``
    Admitted with its recording while that fits; otherwise, as long as its start
    and end fit within the first half of the reserve, it runs with its recording
    dropped (every chunk counted in ``audit.dropped``); below that, refused. The
    second half of the reserve is only ever used by the ends of sessions already
    running and by ``audit.dropped``.

Under both policies, :data:`END_COST` per session already running is kept free
besides the new session's own needs, so the ends of all admitted sessions fit.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = [
    "Admission",
    "DiskRoom",
    "admit_session",
    "disk_room",
    "record_fits",
    "reserve_bytes",
]

MiB: Final = 1 << 20
#: Smallest reserve, and the share of the file system it grows to on larger disks.
RESERVE_MIN: Final = 2 * MiB
RESERVE_SHARE: Final = 0.05
#: Largest default reserve: session ends and the drain never need more.
RESERVE_MAX: Final = 64 * MiB
#: What a session's events cost on disk, counted generously in WAL frames (one
#: SQLite page of 4 KiB plus a 24-byte header per page a commit touches: the table,
#: two indexes and ``sqlite_sequence``, in one to three commits).
START_COST: Final = 32 * 1024
END_COST: Final = 64 * 1024
#: The least recording a session admitted under ``refuse-sessions`` has room for:
#: one full 64 KiB chunk and its pages.
MIN_RECORDING: Final = 96 * 1024
#: Pages a stored chunk costs beyond its own bytes.
CHUNK_OVERHEAD: Final = 16 * 1024


@dataclass(frozen=True)
class DiskRoom:
    """The file system holding the outbox, as ``statvfs`` saw it."""

    #: bytes an unprivileged writer may still use (``f_bavail * f_frsize``)
    free: int
    #: the file system's size (``f_blocks * f_frsize``)
    total: int
    #: the outbox's WAL file, in bytes (0 after a ``wal_checkpoint(TRUNCATE)``)
    wal: int = 0


class Admission(enum.Enum):
    """What :func:`admit_session` decided."""

    RECORDED = "recorded"
    """Runs, recorded."""
    UNRECORDED = "unrecorded"
    """Runs, its recording dropped and counted (``drop-recordings-first``)."""
    REFUSED = "refused"
    """Must not start: it could not be audited."""


def reserve_bytes(total: int, configured: int | None = None) -> int:
    """The reserve on a file system of ``total`` bytes: ``configured`` if given, else
    the larger of 2 MiB and 5 % of it, at most :data:`RESERVE_MAX` (5 % of a 1 TiB
    disk would keep 51 GiB from recordings) and at most half the file system (2 MiB
    would be all of a tiny one)."""
    if configured is not None:
        return max(0, configured)
    return min(max(RESERVE_MIN, int(total * RESERVE_SHARE)), RESERVE_MAX, total // 2)


def record_fits(room: DiskRoom, reserve: int, size: int) -> bool:
    """Whether a recording chunk of ``size`` bytes may be stored without using the reserve."""
    return room.free - (size + CHUNK_OVERHEAD) >= reserve


def admit_session(
    room: DiskRoom | None,
    reserve: int,
    policy: str,
    stored_bytes: int,
    quota_bytes: int,
    running: int = 0,
) -> Admission:
    """May a new session start, and is it recorded? ``room`` None: the disk is unknown
    (``statvfs`` failed), only the quota decides. ``running`` sessions already started
    still have their ends to write: room for them (:data:`END_COST` each) is kept too,
    so that many sessions admitted at the edge of the reserve can all be ended.

    The quota counts the stored events and the WAL; under ``drop-recordings-first``
    the quota never refuses a session (old recordings make room), only the disk does.
    """
    wal = room.wal if room is not None else 0
    ends = max(0, running) * END_COST
    need = START_COST + END_COST + MIN_RECORDING
    if policy == "refuse-sessions":
        if stored_bytes + wal + need > quota_bytes:
            return Admission.REFUSED
        if room is not None and room.free - need - ends < reserve:
            return Admission.REFUSED
        return Admission.RECORDED
    if room is None or room.free - need - ends >= reserve:
        return Admission.RECORDED
    if room.free - (START_COST + END_COST) - ends >= reserve // 2:
        return Admission.UNRECORDED
    return Admission.REFUSED


def disk_room(path: Path, wal: Path | None = None) -> DiskRoom | None:
    """``statvfs`` of the file system holding ``path`` (its directory's: the file may be
    gone) and the WAL's size, or None (``statvfs`` failed, or the file system reports
    no block counts: unknown, not full)."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return None
    if st.f_blocks == 0:  # procfs, some FUSE and network file systems: no figures
        return None
    wal_size = 0
    if wal is not None:
        try:
            wal_size = wal.stat().st_size
        except OSError:
            wal_size = 0
    return DiskRoom(free=st.f_bavail * st.f_frsize, total=st.f_blocks * st.f_frsize, wal=wal_size)
