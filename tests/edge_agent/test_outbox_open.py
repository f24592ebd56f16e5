"""Opening the agent's outbox over a damaged, empty or missing audit.db (real files)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge_agent import outbox_open
from edge_agent.outbox import Outbox
from edge_agent.outbox_open import open_outbox
from edge_agent.seqmark import MARK_FILE, SeqMark
from remoteler.audit.events import AuditEvent, EventType, make_event

NOW = 1_800_000_000.0


async def _open(data: Path) -> Outbox:
    return await open_outbox(
        data / "audit.db",
        data / "identity",
        "n1",
        quota_bytes=1 << 20,
        policy="drop-recordings-first",
        now=NOW,
    )


async def _run(data: Path, n: int) -> list[AuditEvent]:
    """Start, record ``n`` events, stop (as an agent's life)."""
    box = await _open(data)
    try:
        return list(
            await asyncio.gather(
                *(
                    box.append(make_event(EventType.EXEC, node="n1", command=f"c{i}", exit_code=0))
                    for i in range(n)
                )
            )
        )
    finally:
        await box.close()


async def _all(box: Outbox) -> list[AuditEvent]:
    return await box.batch(max_count=10_000, max_bytes=1 << 30)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "identity").mkdir()
    return tmp_path


async def test_first_start_and_restart_record_nothing(data: Path) -> None:
    first = await _run(data, 3)
    assert [e.seq for e in first] == [1, 2, 3]
    box = await _open(data)
    try:
        assert [e.type for e in await _all(box)] == ["exec"] * 3
        assert (await box.append(first[0])).seq == 4  # a sound outbox goes on from itself
    finally:
        await box.close()


@pytest.mark.parametrize("how", ["missing", "empty"])
async def test_a_lost_outbox_resumes_after_the_mark_with_a_gap_event(data: Path, how: str) -> None:
    before = await _run(data, 5)
    reserved = SeqMark.load(data / "identity", "n1").reserved
    assert reserved >= 5
    outbox = data / "audit.db"
    if how == "missing":
        outbox.unlink()
    else:
        os.truncate(outbox, 0)
    box = await _open(data)
    try:
        (gap,) = await _all(box)
        assert gap.type == "audit.gap" and gap.seq == reserved + 1
        assert gap.fields == {"reason": how, "resumed_at": reserved + 1, "reserved": reserved}
        assert max(e.seq for e in before) < gap.seq
    finally:
        await box.close()


async def test_garbage_is_set_aside_and_recorded(data: Path) -> None:
    await _run(data, 5)
    reserved = SeqMark.load(data / "identity", "n1").reserved
    garbage = os.urandom(16 << 10)
    (data / "audit.db").write_bytes(garbage)
    box = await _open(data)
    try:
        (note,) = await _all(box)
    finally:
        await box.close()
    assert note.type == "audit.corrupt" and note.seq == reserved + 1
    assert note.fields["events_salvaged"] == 0
    assert note.fields["pages"] == note.fields["pages_lost"] == 4
    assert "not a database" in note.fields["reason"]
    aside = data / note.fields["moved_to"]
    assert aside.name == "audit.db.corrupt-20270115T080000Z"
    assert aside.read_bytes() == garbage  # kept for forensics, untouched


async def test_salvaged_events_keep_their_seq_and_numbering_goes_on(data: Path) -> None:
    before = await _run(data, 200)
    path = data / "audit.db"
    raw = bytearray(path.read_bytes())
    leaves = [n for n in range(1, len(raw) // 4096) if raw[n * 4096] == 13]
    victim = leaves[len(leaves) // 2]
    raw[victim * 4096 : (victim + 1) * 4096] = os.urandom(4096)
    path.write_bytes(bytes(raw))
    box = await _open(data)
    try:
        events = await _all(box)
    finally:
        await box.close()
    *salvaged, note = events
    assert note.type == "audit.corrupt" and note.fields["events_salvaged"] == len(salvaged)
    assert 150 < len(salvaged) < 200 and note.fields["pages_lost"] == 1
    by_id = {e.id: e for e in before}
    assert all(by_id[e.id] == e for e in salvaged)  # same id, seq, fields
    assert note.seq > max(e.seq for e in before)


async def test_a_damaged_mark_is_set_aside_and_the_outbox_goes_on(data: Path) -> None:
    await _run(data, 3)
    (data / "identity" / MARK_FILE).write_bytes(b"\x00\x01")
    box = await _open(data)
    try:
        assert (
            await box.append(make_event(EventType.EXEC, node="n1", command="c", exit_code=0))
        ).seq == 4
    finally:
        await box.close()
    assert [p.name for p in (data / "identity").iterdir() if ".corrupt-" in p.name]
    assert SeqMark.load(data / "identity", "n1").reserved >= 4


async def test_a_damaged_mark_on_read_only_storage_never_stops_the_outbox(data: Path) -> None:
    """identity/ on a read-only tmpfs holding a damaged mark: it cannot be set aside nor
    written, yet the outbox opens and stores events (before: OSError, the agent stopped)."""
    ident = data / "identity"
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ident)], check=True)
    try:
        (ident / MARK_FILE).write_bytes(b"\x00\x01")
        subprocess.run(["mount", "-o", "remount,ro", str(ident)], check=True)
        events = await _run(data, 3)
        assert [e.seq for e in events] == [1, 2, 3]
        assert (ident / MARK_FILE).read_bytes() == b"\x00\x01"
    finally:
        subprocess.run(["umount", str(ident)], check=True)


class _Crash(BaseException):
    """The process dies here (not an Exception: no fallback may catch it)."""


@pytest.mark.parametrize("step", ["write_rows", "move_aside"])
async def test_a_crash_during_the_repair_loses_nothing_on_the_next_start(
    data: Path, step: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent dies right after one step of the repair, then starts again: the
    salvaged events are all there once, with one ``audit.corrupt`` and no
    ``audit.gap`` (before: a death after the move left no audit.db, so the next
    start saw a lost outbox and the salvageable events stayed in the aside file;
    one after writing the rows never recorded audit.corrupt)."""
    before = await _run(data, 200)
    path = data / "audit.db"
    raw = bytearray(path.read_bytes())
    leaves = [n for n in range(1, len(raw) // 4096) if raw[n * 4096] == 13]
    raw[leaves[len(leaves) // 2] * 4096 : (leaves[len(leaves) // 2] + 1) * 4096] = bytes(4096)
    path.write_bytes(bytes(raw))
    real = getattr(outbox_open, step)

    def then_die(*args: Any) -> Any:
        real(*args)
        raise _Crash

    monkeypatch.setattr(outbox_open, step, then_die)
    with pytest.raises(_Crash):
        await _open(data)
    monkeypatch.undo()
    box = await _open(data)
    try:
        events = await _all(box)
    finally:
        await box.close()
    assert [e.type for e in events].count("audit.corrupt") == 1
    assert "audit.gap" not in [e.type for e in events]
    *salvaged, note = events
    assert note.type == "audit.corrupt" and note.fields["events_salvaged"] == len(salvaged)
    assert 150 < len(salvaged) < 200
    by_id = {e.id: e for e in before}
    assert all(by_id[e.id] == e for e in salvaged)
    aside = [p.name for p in data.iterdir() if p.name.startswith("audit.db.corrupt-")]
    assert aside == [note.fields["moved_to"]] or sorted(aside) == [
        note.fields["moved_to"],
        note.fields["moved_to"] + "-wal",
    ]
    assert not (data / "audit.db.salvaged").exists()


@pytest.mark.parametrize("damaged", [False, True])
async def test_a_sequence_number_out_of_range_never_stops_numbering(
    data: Path, damaged: bool
) -> None:
    """sqlite_sequence at 2**63 - 1 (a bit flipped in it; quick_check reads no values):
    the outbox is treated as damaged and numbering goes on from the mark (before: a
    sound file handed out 2**63, which SQLite refuses, so every append failed; a
    damaged one stopped the agent with OverflowError in the salvage)."""
    before = await _run(data, 200)
    path = data / "audit.db"
    db = sqlite3.connect(path)
    db.execute("UPDATE sqlite_sequence SET seq = ?", ((1 << 63) - 1,))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    if damaged:
        raw = bytearray(path.read_bytes())
        leaf = [n for n in range(1, len(raw) // 4096) if raw[n * 4096] == 13][2]
        raw[leaf * 4096 : (leaf + 1) * 4096] = os.urandom(4096)
        path.write_bytes(bytes(raw))
    box = await _open(data)
    try:
        events = await _all(box)
        new = await box.append(make_event(EventType.EXEC, node="n1", command="x", exit_code=0))
    finally:
        await box.close()
    assert events[-1].type == "audit.corrupt"
    assert max(e.seq for e in before) < new.seq < 1 << 20
