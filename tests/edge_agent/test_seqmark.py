"""The audit sequence's high-water mark on real files, alone and under a real outbox."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import stat
from pathlib import Path

import pytest

from edge_agent.outbox import Outbox
from edge_agent.seqmark import MARK_FILE, SeqMark, SeqMarkError
from remoteler.audit.events import AuditEvent, EventType, make_event


def _exec(i: int) -> AuditEvent:
    return make_event(EventType.EXEC, node="n1", command=f"c{i}", exit_code=0)


def test_no_file_is_a_mark_at_zero(tmp_path: Path) -> None:
    mark = SeqMark.load(tmp_path, "n1")
    assert mark.reserved == 0 and mark.floor == 1
    assert not mark.covers(1)


def test_reserve_is_durable_private_and_ahead(tmp_path: Path) -> None:
    mark = SeqMark.load(tmp_path, "n1", ahead=100)
    mark.reserve(7)
    assert mark.reserved == 107 and mark.covers(107) and not mark.covers(108)
    path = tmp_path / MARK_FILE
    assert json.loads(path.read_text()) == {"node_id": "n1", "reserved": 107}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SeqMark.load(tmp_path, "n1").reserved == 107
    mark.reserve(3)  # never goes back
    assert mark.reserved == 107
    assert [p.name for p in tmp_path.iterdir()] == [MARK_FILE]  # no temporary file left


def test_another_nodes_mark_is_ignored(tmp_path: Path) -> None:
    SeqMark.load(tmp_path, "old-node").reserve(10)
    assert SeqMark.load(tmp_path, "new-node").reserved == 0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00garbage",
        b"[]",
        b'{"node_id": "n1"}',
        b'{"node_id": "n1", "reserved": -1}',
        b'{"node_id": "n1", "reserved": 9223372036854775807}',  # past any usable seq
        b"[" * 3000,  # json's RecursionError, not a ValueError
        b'{"node_id": "n1", "reserved": 1}' + b" " * (1 << 20),  # not read whole
    ],
)
def test_a_damaged_mark_raises_one_clear_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / MARK_FILE).write_bytes(content)
    with pytest.raises(SeqMarkError, match=MARK_FILE):
        SeqMark.load(tmp_path, "n1")


async def test_outbox_reserves_before_it_crosses_the_mark(tmp_path: Path) -> None:
    """Every committed seq is covered by the mark on disk; one write per ``ahead`` events."""
    mark = SeqMark.load(tmp_path, "n1", ahead=50)
    box = await Outbox.open(tmp_path / "audit.db", node="n1", mark=mark)
    try:
        for i in range(120):
            stored = await box.append(_exec(i))
            assert SeqMark.load(tmp_path, "n1").reserved >= stored.seq
        # a burst in one group commit: one reservation covers it
        burst = await asyncio.gather(*(box.append(_exec(i)) for i in range(300)))
        assert SeqMark.load(tmp_path, "n1").reserved >= max(e.seq for e in burst)
    finally:
        await box.close()
    assert mark.writes == 4  # 1-50, 51-100, 101-150, then 420 + 50 at once
    assert mark.reserved == 470


async def test_outbox_starts_at_the_floor_after_a_loss(tmp_path: Path) -> None:
    mark = SeqMark.load(tmp_path, "n1", ahead=50)
    box = await Outbox.open(tmp_path / "audit.db", node="n1", mark=mark)
    await box.append(_exec(0))
    await box.close()
    (tmp_path / "audit.db").unlink()
    mark = SeqMark.load(tmp_path, "n1")
    mark.floor = mark.reserved + 1
    box = await Outbox.open(tmp_path / "audit.db", node="n1", mark=mark)
    try:
        assert (await box.append(_exec(1))).seq == 52
    finally:
        await box.close()


async def test_a_mark_that_cannot_be_written_never_fails_an_append(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Read-only or full storage under the identity: the event is still stored (one
    error line, not one per commit), and the mark is written again once it can be."""
    (tmp_path / MARK_FILE).mkdir()  # a rename over it fails, as on a read-only fs
    mark = SeqMark(tmp_path / MARK_FILE, "n1", ahead=2)
    box = await Outbox.open(tmp_path / "audit.db", node="n1", mark=mark)
    try:
        caplog.set_level(logging.ERROR, "remoteler.agent.seqmark")
        assert [(await box.append(_exec(i))).seq for i in range(5)] == [1, 2, 3, 4, 5]
        assert len([r for r in caplog.records if "cannot be written" in r.message]) == 1
        (tmp_path / MARK_FILE).rmdir()
        assert (await box.append(_exec(5))).seq == 6
        assert SeqMark.load(tmp_path, "n1").reserved == 8 and not mark.failing
    finally:
        await box.close()


async def test_the_mark_is_on_disk_before_the_events_it_covers_are_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The crash window: a seq committed but not covered by the mark on disk could be
    handed out again after a loss. At each reservation, the outbox file (read by
    another connection) does not hold the seqs being reserved yet."""
    seen: list[tuple[int, int]] = []
    real = SeqMark.reserve

    def reserve(self: SeqMark, seq: int) -> None:
        db = sqlite3.connect(f"file:{tmp_path / 'audit.db'}?mode=ro", uri=True)
        try:
            seen.append((seq, db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]))
        finally:
            db.close()
        real(self, seq)

    monkeypatch.setattr(SeqMark, "reserve", reserve)
    box = await Outbox.open(
        tmp_path / "audit.db", node="n1", mark=SeqMark.load(tmp_path, "n1", ahead=5)
    )
    try:
        for i in range(12):
            await box.append(_exec(i))
        ids = [e.id for e in await box.batch()]
        await box.renumber(ids[:3], floor=100)
    finally:
        await box.close()
    assert len(seen) == 3  # at seq 1 and 7 (each 5 ahead: up to 12), then 102 (renumbered)
    assert all(committed < seq for seq, committed in seen), seen
