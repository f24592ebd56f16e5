"""The outbox's disk arithmetic (no I/O), and statvfs on a real tmpfs."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from tmpfskit import fill, tmpfs

from edge_agent.outbox import Outbox, QuotaExceeded
from edge_agent.outbox_quota import (
    CHUNK_OVERHEAD,
    END_COST,
    MIN_RECORDING,
    RESERVE_MAX,
    START_COST,
    Admission,
    DiskRoom,
    admit_session,
    disk_room,
    record_fits,
    reserve_bytes,
)
from remoteler.audit.events import AuditEvent, EventType, make_event

MiB = 1 << 20
NEED = START_COST + END_COST + MIN_RECORDING


def test_reserve_is_2_mib_or_5_percent_whichever_is_larger() -> None:
    assert reserve_bytes(8 * MiB) == 2 * MiB
    assert reserve_bytes(40 * MiB) == 2 * MiB
    assert reserve_bytes(1000 * MiB) == 50 * MiB
    assert reserve_bytes(1000 * MiB, configured=3 * MiB) == 3 * MiB
    assert reserve_bytes(1000 * MiB, configured=-1) == 0


def test_the_default_reserve_is_bounded_on_huge_and_tiny_file_systems() -> None:
    # 5 % of 1 TiB is 51 GiB: a device 95 % full would drop every recording while
    # holding tens of GiB for a few KiB of session ends; capped at 64 MiB.
    assert reserve_bytes(1 << 40) == RESERVE_MAX == 64 * MiB
    assert reserve_bytes(1280 * MiB) == 64 * MiB
    # On a file system under 4 MiB, 2 MiB would be all or most of it: half at most.
    assert reserve_bytes(2 * MiB) == MiB
    assert reserve_bytes(0) == 0
    assert reserve_bytes(1 << 40, configured=100 * MiB) == 100 * MiB  # as configured


def test_a_file_system_without_block_counts_is_unknown_not_full() -> None:
    # procfs, sysfs and some FUSE or network file systems report 0 blocks: taken at
    # face value that is a full disk, and every session would be refused.
    assert os.statvfs("/proc").f_blocks == 0
    assert disk_room(Path("/proc/audit.db")) is None


def test_recordings_never_use_the_reserve() -> None:
    room = DiskRoom(free=3 * MiB, total=8 * MiB)
    assert record_fits(room, 2 * MiB, MiB - CHUNK_OVERHEAD)
    assert not record_fits(room, 2 * MiB, MiB - CHUNK_OVERHEAD + 1)


def test_refuse_sessions_needs_start_end_and_some_recording_outside_the_reserve() -> None:
    reserve = 2 * MiB
    fits = DiskRoom(free=reserve + NEED, total=8 * MiB)
    short = DiskRoom(free=reserve + NEED - 1, total=8 * MiB)
    big = 1 << 30
    assert admit_session(fits, reserve, "refuse-sessions", 0, big) is Admission.RECORDED
    assert admit_session(short, reserve, "refuse-sessions", 0, big) is Admission.REFUSED


def test_refuse_sessions_counts_the_wal_in_the_quota() -> None:
    room = DiskRoom(free=100 * MiB, total=1000 * MiB, wal=MiB)
    quota = 5 * MiB
    stored = quota - MiB - NEED
    assert admit_session(room, 0, "refuse-sessions", stored, quota) is Admission.RECORDED
    assert admit_session(room, 0, "refuse-sessions", stored + 1, quota) is Admission.REFUSED
    # statvfs failed: the quota alone decides
    assert admit_session(None, 0, "refuse-sessions", quota - NEED, quota) is Admission.RECORDED


def test_drop_recordings_first_runs_unrecorded_in_the_first_half_of_the_reserve() -> None:
    reserve, total, policy = 2 * MiB, 8 * MiB, "drop-recordings-first"

    def admit(free: int) -> Admission:
        # the quota never refuses under this policy: old recordings make room
        return admit_session(DiskRoom(free, total), reserve, policy, 1 << 40, 1)

    assert admit(reserve + NEED) is Admission.RECORDED
    assert admit(reserve + NEED - 1) is Admission.UNRECORDED
    assert admit(reserve // 2 + START_COST + END_COST) is Admission.UNRECORDED
    assert admit(reserve // 2 + START_COST + END_COST - 1) is Admission.REFUSED
    assert admit(0) is Admission.REFUSED
    assert admit_session(None, reserve, policy, 0, 1) is Admission.RECORDED


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "mnt", 4 * MiB) as mnt:
        yield mnt


def test_disk_room_reads_statvfs_and_the_wal(small_fs: Path) -> None:
    wal = small_fs / "audit.db-wal"
    wal.write_bytes(b"w" * 12345)
    room = disk_room(small_fs / "audit.db", wal)
    assert room is not None
    assert room.total == 4 * MiB and room.wal == 12345
    assert 4 * MiB - 16 * 1024 <= room.free <= 4 * MiB - 12345
    (small_fs / "more").write_bytes(os.urandom(MiB))
    after = disk_room(small_fs / "audit.db", wal)
    assert after is not None and after.free <= room.free - MiB
    assert disk_room(small_fs / "gone" / "audit.db") is None
    assert disk_room(small_fs / "audit.db", small_fs / "no-wal") == DiskRoom(
        free=after.free, total=after.total, wal=0
    )


def _exec(i: int) -> AuditEvent:
    return make_event(EventType.EXEC, node="n1", user="u", command=f"c{i}", exit_code=0)


def _chunk(i: int) -> AuditEvent:
    return make_event(
        EventType.SESSION_DATA, node="n1", chunk=i, codec="zlib", data=os.urandom(10_000)
    )


async def test_the_outbox_keeps_its_reserve_and_counts_failed_commits(small_fs: Path) -> None:
    """On a real 4 MiB tmpfs (reserve 2 MiB): a chunk inside the reserve is dropped, an
    end still stored; a commit that fails on a full disk is counted in the next
    audit.dropped once there is room."""
    box = await Outbox.open(small_fs / "audit.db", node="n1")
    try:
        assert (await box.append(_chunk(0))).seq > 0
        inside = fill(small_fs, leave=MiB)
        assert (await box.append(_chunk(1))).seq == 0  # would cut into the reserve
        assert (await box.append(_exec(0))).seq > 0  # a session's end: into the reserve
        with pytest.raises(QuotaExceeded, match="disk is full"):
            box.check_room()  # the reserve minus a session's needs
        full = fill(small_fs, name="rest")
        with pytest.raises(sqlite3.OperationalError, match="full"):
            await box.append(_exec(1))
        full.unlink()
        inside.unlink()

        async def dropped() -> int:
            stored = await box.batch(max_count=100, max_bytes=1 << 30)
            # (a batch sends the pending note on its way: a later drop writes a new one)
            return sum(
                int(e.fields["dropped"]) for e in stored if e.type == EventType.AUDIT_DROPPED
            )

        async with asyncio.timeout(10):  # recorded by itself, with nothing appended
            while await dropped() < 2:  # the chunk, and the exec whose commit failed
                await asyncio.sleep(0.1)
        assert (await box.append(_exec(2))).seq > 0
        stored = await box.batch(max_count=100, max_bytes=1 << 30)
        assert [e.fields["command"] for e in stored if e.type == EventType.EXEC] == ["c0", "c2"]
        assert await dropped() == 2
        assert box.admit() is Admission.RECORDED
    finally:
        await box.close()


async def test_a_configured_reserve_replaces_the_default(small_fs: Path) -> None:
    box = await Outbox.open(small_fs / "audit.db", node="n1", reserve_bytes=0)
    try:
        filler = fill(small_fs, leave=MiB)
        assert (await box.append(_chunk(0))).seq > 0
        filler.unlink()
    finally:
        await box.close()


async def test_failed_commits_keep_one_retry_of_their_count(
    small_fs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each failed commit used to start its own 2 s retry chain of the audit.dropped
    count, for ever: 30 failures on a full disk meant 15 write attempts a second until
    space came back. One retry is pending at a time."""
    import edge_agent.outbox as outbox_module

    monkeypatch.setattr(outbox_module, "LOST_RETRY", 0.05)
    box = await Outbox.open(small_fs / "audit.db", node="n1")
    full = fill(small_fs)
    try:
        tries = 0
        write_lost = box._write_lost

        async def counted() -> None:
            nonlocal tries
            tries += 1
            await write_lost()

        monkeypatch.setattr(box, "_write_lost", counted)
        for i in range(30):
            with pytest.raises(sqlite3.OperationalError):
                await box.append(_exec(i))
        tries = 0
        await asyncio.sleep(0.5)
        assert tries <= 0.5 / 0.05 + 3
        async with asyncio.timeout(10):  # and it is still retried
            while tries == 0:
                await asyncio.sleep(0.05)
    finally:
        full.unlink()
        await box.close()


def test_the_ends_of_running_sessions_are_kept_room_for() -> None:
    reserve, total = 2 * MiB, 8 * MiB
    free = reserve + NEED + 3 * END_COST
    room = DiskRoom(free, total)
    for policy in ("refuse-sessions", "drop-recordings-first"):
        assert admit_session(room, reserve, policy, 0, 1 << 40, 3) is Admission.RECORDED
        assert admit_session(room, reserve, policy, 0, 1 << 40, 4) is not Admission.RECORDED
    # unrecorded: start, end and the running ends above the second half of the reserve
    edge = DiskRoom(reserve // 2 + START_COST + END_COST + 10 * END_COST, total)
    admit = admit_session(edge, reserve, "drop-recordings-first", 0, 1, 10)
    assert admit is Admission.UNRECORDED
    admit = admit_session(edge, reserve, "drop-recordings-first", 0, 1, 11)
    assert admit is Admission.REFUSED


async def test_a_session_is_refused_if_the_running_ones_could_not_end(small_fs: Path) -> None:
    """On a real tmpfs: room for one more session's start, end and recording, but not
    also for the end of the one already running. Before, both were admitted, and the
    ends of many sessions admitted at the edge of the reserve did not fit in it."""
    from edge_agent.audit import AgentAudit

    box = await Outbox.open(small_fs / "audit.db", node="n1", policy="refuse-sessions")
    try:
        audit = AgentAudit(box, "n1")
        first = audit.session("alice", "root", "s1", "true", False)
        await first.start()
        room = box.disk()
        assert room is not None
        box.reserve_bytes = room.free - NEED - END_COST // 2
        with pytest.raises(QuotaExceeded, match="disk is full"):
            await audit.session("bob", "root", "s2", "true", False).start()
        assert len(box.open_sessions) == 1
        await first.end(0)
        assert len(box.open_sessions) == 0
        room = box.disk()
        assert room is not None
        box.reserve_bytes = room.free - NEED - END_COST // 2
        second = audit.session("bob", "root", "s2", "true", False)
        await second.start()  # the first one's end is written: room again
        await second.end(0)
    finally:
        await box.close()


async def test_the_count_of_failed_commits_is_written_at_close(small_fs: Path) -> None:
    """The count lives in memory until it can be written: an agent stopped within the
    2 s retry after space came back took the loss with it, silently."""
    box = await Outbox.open(small_fs / "audit.db", node="n1")
    try:
        full = fill(small_fs)
        with pytest.raises(sqlite3.OperationalError):
            await box.append(_exec(0))
        full.unlink()
    finally:
        await box.close()
    box = await Outbox.open(small_fs / "audit.db", node="n1")
    try:
        stored = await box.batch(max_count=100, max_bytes=1 << 30)
        notes = [e for e in stored if e.type == EventType.AUDIT_DROPPED]
        assert [e.fields["dropped"] for e in notes] == [1]
    finally:
        await box.close()
