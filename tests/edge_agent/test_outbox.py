"""The agent's audit outbox: durability, order, group commit, caps, quota policies."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.outbox import Outbox, QuotaExceeded
from edge_agent.outbox_quota import END_COST, MIN_RECORDING, START_COST
from remoteler.audit.events import AuditEvent, EventType, make_event

ROOT = Path(__file__).resolve().parents[2]
NODE = "node-1"
SESSION_NEED = START_COST + END_COST + MIN_RECORDING


def exec_event(i: int = 0) -> AuditEvent:
    return make_event(EventType.EXEC, node=NODE, user="alice", command=f"cmd {i:04}", exit_code=0)


def chunk(i: int, size: int = 2000) -> AuditEvent:
    return make_event(
        EventType.SESSION_DATA, node=NODE, session_id="s1", chunk=i, codec="zlib", data=b"x" * size
    )


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "outbox.db", node=NODE)
    try:
        yield box
    finally:
        await box.close()


async def everything(box: Outbox) -> list[AuditEvent]:
    return await box.batch(max_count=1 << 30, max_bytes=1 << 40)


async def sizes(tmp_path: Path) -> tuple[int, int]:
    """Stored sizes of one chunk and one exec event."""
    box = await Outbox.open(tmp_path / "sizes.db")
    try:
        await box.append(chunk(0))
        _, rec, _ = await box.depth()
        await box.append(exec_event())
        _, both, _ = await box.depth()
        return rec, both - rec
    finally:
        await box.close()


def dropped_events(events: list[AuditEvent]) -> list[AuditEvent]:
    return [e for e in events if e.type == EventType.AUDIT_DROPPED]


async def test_append_returns_seq_and_batch_is_oldest_first(outbox: Outbox) -> None:
    appended = [await outbox.append(exec_event(i)) for i in range(5)]
    assert [e.seq for e in appended] == [1, 2, 3, 4, 5]
    batch = await outbox.batch()
    assert batch == appended
    assert await outbox.batch() == appended  # nothing is deleted until acked


async def test_durable_across_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = await Outbox.open(path, node=NODE)
    appended = [await box.append(exec_event(i)) for i in range(10)]
    await box.close()

    box = await Outbox.open(path, node=NODE)
    try:
        assert await everything(box) == appended
        count, size, oldest = await box.depth()
        assert count == 10 and size > 0 and oldest == appended[0].time
        # seq keeps growing after a reopen, even once everything was acked
        assert await box.ack([e.id for e in appended]) == 10
    finally:
        await box.close()
    box = await Outbox.open(path, node=NODE)
    try:
        assert (await box.append(exec_event())).seq == 11
    finally:
        await box.close()


async def test_file_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = await Outbox.open(path)
    await box.append(exec_event())
    try:
        for p in (path, path.with_name("outbox.db-wal")):
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        await box.close()
    path.chmod(0o644)
    box = await Outbox.open(path)
    await box.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_group_commit_2000_concurrent_appends(outbox: Outbox, monkeypatch: Any) -> None:
    commits = 0
    real_commit = outbox._commit

    async def counting(group: Any) -> list[AuditEvent]:
        nonlocal commits
        commits += 1
        return await real_commit(group)

    monkeypatch.setattr(outbox, "_commit", counting)
    events = [exec_event(i) for i in range(2000)]
    results = await asyncio.gather(*(outbox.append(e) for e in events))
    assert [r.seq for r in results] == list(range(1, 2001))  # call order
    assert [r.id for r in results] == [e.id for e in events]
    assert commits <= 10, f"{commits} transactions for 2000 concurrent appends"
    stored = await everything(outbox)
    assert [e.id for e in stored] == [e.id for e in events]
    assert (await outbox.depth())[0] == 2000
    assert outbox.changed.is_set()


async def test_batch_caps(outbox: Outbox, tmp_path: Path) -> None:
    for i in range(10):
        await outbox.append(chunk(i))
    rec, _ = await sizes(tmp_path)
    assert len(await outbox.batch(max_count=3)) == 3
    assert len(await outbox.batch(max_bytes=3 * rec)) == 3
    assert len(await outbox.batch(max_bytes=3 * rec - 1)) == 2
    assert len(await outbox.batch(max_bytes=1)) == 1  # always at least one
    assert [e.fields["chunk"] for e in await outbox.batch(max_count=4)] == [0, 1, 2, 3]


async def test_ack_deletes_and_depth(outbox: Outbox) -> None:
    assert await outbox.depth() == (0, 0, None)
    appended = [await outbox.append(exec_event(i)) for i in range(6)]
    count, size, oldest = await outbox.depth()
    assert count == 6 and oldest == appended[0].time
    assert await outbox.ack([appended[0].id, appended[2].id, appended[0].id, "unknown"]) == 2
    assert [e.id for e in await everything(outbox)] == [appended[i].id for i in (1, 3, 4, 5)]
    count2, size2, oldest2 = await outbox.depth()
    assert count2 == 4 and size2 < size and oldest2 == appended[1].time
    assert await outbox.ack([e.id for e in appended]) == 4
    assert await outbox.depth() == (0, 0, None)
    assert await outbox.batch() == []


async def test_drop_recordings_first(tmp_path: Path) -> None:
    rec, ex = await sizes(tmp_path)
    assert ex * 6 < rec  # the arithmetic below relies on it
    box = await Outbox.open(tmp_path / "q.db", quota_bytes=5 * rec, node=NODE)
    try:
        for i in range(5):  # exactly at the quota: nothing dropped
            await box.append(chunk(i))
        assert not dropped_events(await everything(box))
        await box.append(exec_event(0))  # over: the oldest chunk goes
        for i in range(1, 4):
            await box.append(exec_event(i))
        assert (await box.append(chunk(5))).seq > 0  # over again: chunk 1 goes
        box.check_room()  # no-op under this policy

        stored = await everything(box)
        chunks = [e.fields["chunk"] for e in stored if e.type == EventType.SESSION_DATA]
        assert chunks == [2, 3, 4, 5]
        assert len([e for e in stored if e.type == EventType.EXEC]) == 4
        (note,) = dropped_events(stored)  # one per episode, counts merged
        assert note.fields["dropped"] == 2 and note.fields["dropped_bytes"] == 2 * rec
        assert note.node == NODE
        assert [e.seq for e in stored] == sorted(e.seq for e in stored)
        _, size, _ = await box.depth()
        assert size <= 5 * rec

        # Once that event went out in a batch, the next drop starts a new episode.
        await box.append(chunk(6))
        stored = await everything(box)
        assert [e.fields["dropped"] for e in dropped_events(stored)] == [2, 1]
        assert [e.fields["chunk"] for e in stored if e.type == EventType.SESSION_DATA] == [
            3,
            4,
            5,
            6,
        ]
    finally:
        await box.close()


async def test_drop_recordings_first_keeps_every_other_event(tmp_path: Path) -> None:
    rec, _ = await sizes(tmp_path)
    box = await Outbox.open(tmp_path / "q.db", quota_bytes=2 * rec, node=NODE)
    try:
        await box.append(chunk(0))
        await box.append(chunk(1))
        for i in range(40):  # 40 exec events need more than the whole quota
            await box.append(exec_event(i))
        refused = await box.append(chunk(2))  # no recording left to drop: this one goes
        assert refused.seq == 0

        stored = await everything(box)
        assert [e for e in stored if e.type == EventType.SESSION_DATA] == []
        assert len([e for e in stored if e.type == EventType.EXEC]) == 40  # none lost
        (note,) = dropped_events(stored)
        assert note.fields["dropped"] == 3 and note.fields["dropped_bytes"] == 3 * rec
        count, size, _ = await box.depth()
        assert count == 41 and size > 2 * rec  # over quota rather than lose an event
    finally:
        await box.close()


async def test_drop_recordings_first_within_one_group(tmp_path: Path) -> None:
    rec, _ = await sizes(tmp_path)
    box = await Outbox.open(tmp_path / "q.db", quota_bytes=3 * rec, node=NODE)
    try:
        results = await asyncio.gather(*(box.append(chunk(i)) for i in range(5)))
        assert [r.seq > 0 for r in results] == [False, False, True, True, True]
        stored = await everything(box)
        assert [e.fields["chunk"] for e in stored if e.type == EventType.SESSION_DATA] == [2, 3, 4]
        (note,) = dropped_events(stored)
        assert note.fields["dropped"] == 2 and note.fields["dropped_bytes"] == 2 * rec
    finally:
        await box.close()


async def test_refuse_sessions(tmp_path: Path) -> None:
    rec, _ = await sizes(tmp_path)
    path = tmp_path / "q.db"
    box = await Outbox.open(path, quota_bytes=1 << 30, policy="refuse-sessions", node=NODE)
    try:
        for i in range(2):
            await box.append(chunk(i))
        room = box.disk()
        assert room is not None and room.wal > 0
        # The quota counts stored events and the WAL; a session needs room for its
        # start, its end and a minimum of recording.
        box.quota_bytes = 2 * rec + room.wal + SESSION_NEED
        box.check_room()  # just fits
        await box.append(chunk(2))
        with pytest.raises(QuotaExceeded) as info:
            box.check_room()
        assert "refused" in str(info.value) and "quota" in str(info.value)
        box.quota_bytes = 3 * rec  # exactly at the quota, in stored bytes
        end = await box.append(exec_event())  # a running session's end is still recorded
        assert end.seq > 0
        assert (await box.append(chunk(3))).seq == 0  # its output past the quota is not
        assert (await box.append(chunk(4))).seq == 0

        stored = await everything(box)
        assert [e.fields["chunk"] for e in stored if e.type == EventType.SESSION_DATA] == [0, 1, 2]
        assert [e.id for e in stored if e.type == EventType.EXEC] == [end.id]
        (note,) = dropped_events(stored)
        assert note.fields["dropped"] == 2 and note.fields["dropped_bytes"] == 2 * rec

        # The hub took everything: the WAL is checkpointed away, room again.
        await box.ack([e.id for e in stored])
        after = box.disk()
        assert after is not None and after.wal == 0
        box.quota_bytes = SESSION_NEED
        box.check_room()
    finally:
        await box.close()


KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from edge_agent.outbox import Outbox
    from remoteler.audit.events import EventType, make_event

    async def main():
        box = await Outbox.open(Path(sys.argv[1]), node="n")
        async def one(i):
            e = make_event(EventType.EXEC, node="n", command=str(i), exit_code=0)
            await box.append(e)
            sys.stdout.write(e.id + "\\n")
            sys.stdout.flush()
        i = 0
        while True:
            await asyncio.gather(*(one(i + k) for k in range(16)))
            i += 16

    asyncio.run(main())
    """
)


async def test_sigkill_loses_no_reported_event(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(path)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    reported: list[str] = []
    try:
        while len(reported) < 500:
            line = await asyncio.to_thread(proc.stdout.readline)
            assert line, "writer died"
            reported.append(line.decode().strip())
        os.kill(proc.pid, signal.SIGKILL)
        reported += [x for x in (await asyncio.to_thread(proc.stdout.read)).decode().split() if x]
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    box = await Outbox.open(path)
    try:
        stored = {e.id for e in await everything(box)}
    finally:
        await box.close()
    missing = [i for i in reported if i not in stored]
    assert not missing, f"{len(missing)} of {len(reported)} reported events lost"


async def test_an_event_the_hub_would_refuse_fails_only_its_own_append(outbox: Outbox) -> None:
    bad = make_event(EventType.EXEC, node=NODE, login="x" * 300, command="ls", exit_code=0)
    results = await asyncio.gather(
        outbox.append(exec_event(0)), outbox.append(bad), return_exceptions=True
    )
    assert isinstance(results[0], AuditEvent) and results[0].seq == 1
    assert isinstance(results[1], ValueError)
    assert [e.id for e in await everything(outbox)] == [results[0].id]


async def test_renumber_moves_events_after_every_seq_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    """The hub refused seq 2 and 3 (reused): they move, in order, past the hub's floor
    and the outbox's own numbers, and a reopened outbox goes on after them (SQLite's
    AUTOINCREMENT counter does not follow an UPDATE by itself)."""
    from edge_agent.seqmark import SeqMark

    mark = SeqMark.load(tmp_path, "n1", ahead=10)
    box = await Outbox.open(tmp_path / "audit.db", node="n1", mark=mark)
    try:
        events = [await box.append(exec_event(i)) for i in range(4)]
        assert await box.renumber(["nope"]) is None
        assert await box.renumber([events[2].id, events[1].id], floor=40) == (2, 40)
        assert [(e.id, e.seq) for e in await box.batch()] == [
            (events[0].id, 1),
            (events[3].id, 4),
            (events[1].id, 40),
            (events[2].id, 41),
        ]
        assert mark.reserved >= 41 and SeqMark.load(tmp_path, "n1").reserved >= 41
    finally:
        await box.close()
    box = await Outbox.open(tmp_path / "audit.db", node="n1")  # no mark: the file alone
    try:
        assert (await box.append(exec_event(9))).seq == 42
    finally:
        await box.close()


async def test_an_undecodable_stored_event_is_dropped_and_reported(tmp_path: Path) -> None:
    """Bytes of one row damaged on the storage (the b-tree intact, so quick_check
    passes): before, every batch() raised, the forwarder died on each tunnel and
    nothing after that row was ever delivered. Now the row is dropped, counted in an
    ``audit.corrupt`` event, and the rest goes on."""
    path = tmp_path / "audit.db"
    box = await Outbox.open(path, node="n1")
    events = [await box.append(exec_event(i)) for i in range(3)]
    await box.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE events SET body = X'c1c1c1' WHERE seq = 2")
    db.commit()
    db.close()
    box = await Outbox.open(path, node="n1")
    try:
        assert [e.id for e in await box.batch()] == [events[0].id, events[2].id]
        *rest, note = await box.batch()
        assert [e.id for e in rest] == [events[0].id, events[2].id]
        assert note.type == "audit.corrupt" and "seq 2-2" in note.fields["reason"]
        assert (await box.depth())[0] == 3
    finally:
        await box.close()
