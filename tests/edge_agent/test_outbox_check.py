"""The outbox's start-up check and salvage on real SQLite files, damaged on purpose."""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import tracemalloc
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox
from edge_agent.outbox_check import check_outbox, count_pages, move_aside, salvage, write_rows
from remoteler.audit.events import AuditEvent, EventType, make_event

N = 300
PAGE = 4096


async def _filled(path: Path, n: int = N) -> list[AuditEvent]:
    """A real outbox of ``n`` events (~330 bytes each), checkpointed and closed."""
    box = await Outbox.open(path, node="n1")
    try:
        out = await asyncio.gather(  # one group commit
            *(
                box.append(
                    make_event(
                        EventType.EXEC, node="n1", command=f"{i:04d}" + "x" * 300, exit_code=0
                    )
                )
                for i in range(n)
            )
        )
    finally:
        await box.close()
    assert not path.with_name(path.name + "-wal").exists()  # all in the main file
    return out


def _smash(path: Path, page: int) -> None:
    """Overwrite page ``page`` (1-based) with random bytes."""
    with open(path, "r+b") as f:
        f.seek((page - 1) * PAGE)
        f.write(os.urandom(PAGE))


def _leaf_page(path: Path) -> int:
    """A leaf page of the events table well inside the file (from the b-tree header)."""
    data = path.read_bytes()
    leaves = [n for n in range(2, len(data) // PAGE + 1) if data[(n - 1) * PAGE] == 13]
    return leaves[len(leaves) // 2]


async def test_sound_missing_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    assert check_outbox(path).state == "missing"
    path.write_bytes(b"")
    assert check_outbox(path).state == "empty"
    path.unlink()
    await _filled(path, 3)
    assert check_outbox(path).state == "ok"


def test_garbage_is_corrupt_and_nothing_is_salvaged(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    path.write_bytes(os.urandom(16 << 10))
    found = check_outbox(path)
    assert found.state == "corrupt" and "not a database" in found.detail
    saved = salvage(path, hi=100)
    assert saved.rows == () and saved.pages == 4 and saved.pages_lost == 4


async def test_a_sqlite_file_that_is_not_an_outbox_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE other (x)")
    db.close()
    assert check_outbox(path).state == "corrupt"


async def test_salvage_reads_around_a_damaged_page(tmp_path: Path) -> None:
    """One leaf page of 300 events destroyed: the scan stops there, the probe goes on
    past it, and every other event comes back byte for byte with its seq."""
    path = tmp_path / "audit.db"
    events = await _filled(path)
    pages_before = count_pages(path)
    assert pages_before[1] == 0
    _smash(path, _leaf_page(path))
    assert check_outbox(path).state == "corrupt"
    saved = salvage(path, hi=N)
    by_seq = {e.seq: e for e in events}
    assert N - 20 <= len(saved.rows) < N  # a 4 KiB leaf holds ~11 of these rows
    assert saved.rows[-1].seq == N  # rows after the damage are found too
    for row in saved.rows:
        assert row.id == by_seq[row.seq].id and row.type == "exec"
    assert saved.pages == pages_before[0] and saved.pages_lost == 1
    assert saved.last_seq == N


async def test_salvaged_rows_make_a_sound_outbox(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    events = await _filled(path, 40)
    _smash(path, _leaf_page(path))
    aside = move_aside(path, 1_700_000_000.0)
    assert aside.name == "audit.db.corrupt-20231114T221320Z" and not path.exists()
    saved = salvage(aside, hi=40)
    write_rows(path, saved.rows)
    assert check_outbox(path).state == "ok"
    assert move_aside(path, 1_700_000_000.0).name.endswith(".1")  # never overwrites one
    write_rows(path, saved.rows)
    box = await Outbox.open(path, node="n1")
    try:
        batch = await box.batch(max_count=100)
        assert [e.seq for e in batch] == [r.seq for r in saved.rows]
        assert {e.id for e in batch} < {e.id for e in events}
        new = await box.append(make_event(EventType.EXEC, node="n1", command="c", exit_code=0))
        assert new.seq == 41  # the AUTOINCREMENT high mark came along
    finally:
        await box.close()


@pytest.mark.parametrize("page", [1, 2])
async def test_a_damaged_header_or_root_salvages_nothing_without_raising(
    tmp_path: Path, page: int
) -> None:
    path = tmp_path / "audit.db"
    await _filled(path, 50)
    _smash(path, page)
    assert check_outbox(path).state == "corrupt"
    saved = salvage(path, hi=50)
    assert len(saved.rows) < 50


async def test_events_still_in_the_wal_are_salvaged_with_it(tmp_path: Path) -> None:
    """A damaged main file next to an intact ``-wal`` (the agent was killed before a
    checkpoint): both are set aside together and the WAL's events come back too."""
    live = tmp_path / "live" / "audit.db"
    live.parent.mkdir()
    older = await _filled(live)
    box = await Outbox.open(live, node="n1")
    try:
        newer = [
            await box.append(make_event(EventType.EXEC, node="n1", command=f"w{i}", exit_code=0))
            for i in range(20)
        ]
        path = tmp_path / "audit.db"  # a copy as a kill -9 would leave it
        path.write_bytes(live.read_bytes())
        wal = live.with_name("audit.db-wal").read_bytes()
        assert wal
        path.with_name("audit.db-wal").write_bytes(wal)
    finally:
        await box.close()
    _smash(path, _leaf_page(path))
    assert check_outbox(path).state == "corrupt"
    aside = move_aside(path, 1_700_000_000.0)
    assert aside.with_name(aside.name + "-wal").read_bytes() == wal
    saved = salvage(aside, hi=N + 20)
    ids = {r.id for r in saved.rows}
    assert {e.id for e in newer} <= ids
    assert len(ids & {e.id for e in older}) >= N - 20


async def test_random_damage_never_raises(tmp_path: Path) -> None:
    """Bounded fuzz: bytes overwritten anywhere in a real outbox. The check says corrupt
    or ok, salvage returns valid events of the original set, and never raises."""
    pristine = tmp_path / "pristine.db"
    events = {e.id: e for e in await _filled(pristine, 120)}
    data = pristine.read_bytes()
    rng = random.Random(15)
    path = tmp_path / "audit.db"
    for _ in range(25):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(damaged))
            damaged[at : at + rng.randint(1, 600)] = rng.randbytes(rng.randint(1, 600))
        path.write_bytes(bytes(damaged))
        found = check_outbox(path)
        assert found.state in ("ok", "corrupt")
        saved = salvage(path, hi=120)
        assert 0 <= saved.pages_lost <= saved.pages
        for row in saved.rows:
            assert row.id in events and events[row.id].seq == row.seq
        fresh = tmp_path / "fresh.db"
        write_rows(fresh, saved.rows)
        assert check_outbox(fresh).state == "ok"
        for p in tmp_path.glob("fresh.db*"):
            p.unlink()


def test_counting_pages_reads_one_page_at_a_time(tmp_path: Path) -> None:
    """A 64 MiB damaged outbox (sparse: SQLite's header, then zero pages) is counted
    without holding it in memory (before: the whole file read at once)."""
    path = tmp_path / "audit.db"
    with open(path, "wb") as f:
        f.write(b"SQLite format 3\x00" + (4096).to_bytes(2, "big"))
        f.truncate(64 << 20)
    tracemalloc.start()
    try:
        assert count_pages(path) == (16384, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
