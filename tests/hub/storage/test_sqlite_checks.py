"""The SQLite engine's checks of its files (the former hub/dbcheck.py), on real files
made by the engine, then damaged, locked, mounted read-only or left without space.

``Storage.check()`` runs ``PRAGMA quick_check`` on hub.db, audit.db and
firmware/firmware.db (``hub start`` calls it before serving); opening refuses an
empty audit trail beside enrolled nodes (``part_b.refuse_lost_trail``). Every
failure is one line that names the file and says what to do next; a file that is
only busy, read-only or on a full disk is never called damaged.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from require import require_root
from tmpfskit import fill, tmpfs

from hub.storage.api import Node, StorageError, Unavailable
from hub.storage.sqlite import open_sqlite, txdb
from hub.storage.sqlite.errors import storage_error
from remoteler.audit.events import AuditEvent


def _events(first: int, count: int, node: str = "id-0") -> list[AuditEvent]:
    return [
        AuditEvent(
            id=f"e{i:05}", type="session.start", time=1.0 + i, node=node, seq=i, user="u" * 300
        )
        for i in range(first, first + count)
    ]


async def _make(data: Path, nodes: int = 1, events: int = 50) -> None:
    """A data dir written and closed by the engine: ``nodes`` nodes, ``events`` events."""
    storage = await open_sqlite(data)
    try:
        for i in range(nodes):
            await storage.nodes.add(Node(id=f"id-{i}", name=f"n{i}"))
        await storage.audit.insert_checked("id-0", _events(1, events))
        await storage.check()
    finally:
        await storage.close()


async def _open_and_check(data: Path, *, accept_empty_audit: bool = False) -> None:
    storage = await open_sqlite(data, accept_empty_audit=accept_empty_audit)
    try:
        await storage.check()
    finally:
        await storage.close()


def _damage_pages(path: Path) -> None:
    """Overwrite everything after the first page (header and schema stay readable)."""
    size = path.stat().st_size
    assert size > 4096 * 2, size
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(size - 4096))


def _one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    line = str(err.value)
    assert "\n" not in line, line
    return line


async def test_sound_files_pass(tmp_path: Path) -> None:
    await _make(tmp_path)
    await _open_and_check(tmp_path)


async def test_damaged_pages_of_audit_db_are_named(tmp_path: Path) -> None:
    await _make(tmp_path)
    _damage_pages(tmp_path / "audit.db")
    with pytest.raises(StorageError) as err:
        await _open_and_check(tmp_path)
    line = _one_line(err)
    assert line.startswith(f"{tmp_path / 'audit.db'} is damaged ("), line
    assert "stop the hub and restore it from a backup" in line, line
    assert "--accept-empty-audit" in line, line  # what moving it aside costs


async def test_a_garbage_hub_db_is_named(tmp_path: Path) -> None:
    await _make(tmp_path)
    (tmp_path / "hub.db").write_bytes(b"not a database, not at all" * 200)
    with pytest.raises(StorageError) as err:
        await _open_and_check(tmp_path)
    line = _one_line(err)
    assert line.startswith(f"{tmp_path / 'hub.db'} is damaged (file is not a database)"), line
    assert "restore it from a backup" in line and "join again" in line, line


async def test_damaged_pages_of_hub_db_are_named(tmp_path: Path) -> None:
    await _make(tmp_path, nodes=200)
    _damage_pages(tmp_path / "hub.db")
    with pytest.raises(StorageError) as err:
        await _open_and_check(tmp_path)
    line = _one_line(err)
    assert line.startswith(f"{tmp_path / 'hub.db'} is damaged ("), line
    assert "restore it from a backup" in line, line


async def test_firmware_db_is_checked(tmp_path: Path) -> None:
    await _make(tmp_path)
    (tmp_path / "firmware" / "firmware.db").write_bytes(os.urandom(8192))
    with pytest.raises(StorageError) as err:
        await _open_and_check(tmp_path)
    line = _one_line(err)
    assert line.startswith(f"{tmp_path / 'firmware' / 'firmware.db'} is damaged ("), line
    assert "restore it from a backup" in line and "roll-out history" in line, line


async def test_an_empty_audit_trail_next_to_enrolled_nodes_is_refused(tmp_path: Path) -> None:
    await _make(tmp_path, nodes=3)
    audit = tmp_path / "audit.db"
    audit.write_bytes(b"")
    with pytest.raises(StorageError, match=r"audit\.db is empty but .*hub\.db lists 3 node") as e:
        await _open_and_check(tmp_path)
    _one_line(e)
    audit.unlink()
    with pytest.raises(StorageError, match=r"audit\.db is missing .*--accept-empty-audit"):
        await _open_and_check(tmp_path)
    assert not audit.exists()  # refused before anything made a new one
    await _open_and_check(tmp_path, accept_empty_audit=True)
    assert audit.stat().st_size > 0  # a new trail, begun on purpose
    await _open_and_check(tmp_path)


async def test_an_empty_audit_trail_without_nodes_is_a_new_hub(tmp_path: Path) -> None:
    await _make(tmp_path, nodes=0, events=0)
    (tmp_path / "audit.db").write_bytes(b"")
    await _open_and_check(tmp_path)
    await _open_and_check(tmp_path / "never-started")  # first start: nothing to check


@pytest.fixture
def held_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """hub.db with another process holding an exclusive lock on it (as a backup tool
    or an admin's ``sqlite3`` shell in a long transaction can)."""
    import asyncio

    asyncio.run(_make(tmp_path))
    monkeypatch.setattr(txdb, "BUSY_TIMEOUT", 0.3)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            f"db = sqlite3.connect({str(tmp_path / 'hub.db')!r}, isolation_level=None)\n"
            "db.execute('PRAGMA locking_mode=EXCLUSIVE')\n"
            "db.execute('BEGIN EXCLUSIVE')\n"
            "db.execute('SELECT count(*) FROM nodes').fetchone()\n"
            "print('locked', flush=True)\n"
            "sys.stdin.read()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield tmp_path
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)


async def test_a_sound_database_locked_by_another_process_is_not_called_damaged(
    held_lock: Path,
) -> None:
    with pytest.raises(Unavailable) as err:
        await _open_and_check(held_lock)
    line = _one_line(err)
    assert "damaged" not in line and "restore" not in line, line
    assert line.startswith(f"{held_lock / 'hub.db'} is in use by another process"), line
    assert "try again" in line, line


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """Sound databases on a file system remounted read-only (as the kernel does to a
    failing SD card or eMMC): a real tmpfs, unmounted at the end."""
    import asyncio

    require_root("mounts a tmpfs")
    with tmpfs(tmp_path / "ro") as mnt:
        asyncio.run(_make(mnt))
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt


async def test_a_sound_database_on_a_read_only_file_system_is_not_called_damaged(
    read_only_dir: Path,
) -> None:
    with pytest.raises(StorageError) as err:
        await _open_and_check(read_only_dir)
    line = _one_line(err)
    assert "damaged" not in line and "restore" not in line, line
    assert line.startswith(f"{read_only_dir / 'hub.db'} cannot be opened"), line
    assert "read-write" in line, line


async def test_a_full_disk_says_free_space_not_restore(tmp_path: Path) -> None:
    require_root("mounts a tmpfs")
    with tmpfs(tmp_path / "full", size=4 << 20) as data:
        await _make(data)
        storage = await open_sqlite(data)
        try:
            filler = fill(data)
            with pytest.raises(StorageError) as err:
                for first in range(1000, 100_000, 1000):  # past what the pages had free
                    await storage.audit.insert_checked("id-0", _events(first, 1000))
            line = _one_line(err)
            assert "damaged" not in line and "restore" not in line, line
            assert str(data / "audit.db") in line and "free space" in line, line
            filler.unlink()
            await storage.check()  # sound all along
        finally:
            await storage.close()


@pytest.mark.parametrize(
    ("error", "words", "kind"),
    [
        ("database disk image is malformed", "is damaged (", StorageError),
        ("database is locked", "in use by another process", Unavailable),
        ("database or disk is full", "free space", StorageError),
        ("attempt to write a readonly database", "mounted read-write", StorageError),
    ],
)
def test_an_error_without_a_code_is_still_told_apart(
    tmp_path: Path, error: str, words: str, kind: type[StorageError]
) -> None:
    """The line for an error met later (no code on it): only damage says restore."""
    line = str(storage_error(tmp_path / "audit.db", sqlite3.OperationalError(error)))
    assert line.startswith(str(tmp_path / "audit.db")) and words in line, line
    assert type(storage_error(tmp_path / "hub.db", sqlite3.OperationalError(error))) is kind
    assert ("restore" in line) == (words == "is damaged ("), line
