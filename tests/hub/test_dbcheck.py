"""hub/dbcheck.py on real SQLite files made by the hub's own stores, then damaged."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from require import require_root

from hub import dbcheck
from hub.audit_store import AuditStore, audit_db_path
from hub.dbcheck import check_data_dir, diagnose, quick_check
from hub.storage.api import Node
from hub.storage.sqlite import open_sqlite
from remoteler.audit.events import AuditEvent
from remoteler.errors import ConfigError


def _make(data: Path, nodes: int = 1, events: int = 50) -> None:
    """A hub data dir's hub.db and audit.db, written and closed by the real stores."""

    async def run() -> None:
        storage = await open_sqlite(data)
        audit = await AuditStore.open(audit_db_path(data))
        try:
            for i in range(nodes):
                await storage.nodes.add(Node(id=f"id-{i}", name=f"n{i}"))
            await audit.insert(
                "id-0",
                [
                    AuditEvent(
                        id=f"e{i:05}",
                        type="session.start",
                        time=1.0 + i,
                        node="id-0",
                        seq=i,
                        user="u" * 300,
                    )
                    for i in range(events)
                ],
            )
        finally:
            await storage.close()
            await audit.close()

    asyncio.run(run())


def _damage_pages(path: Path) -> None:
    """Overwrite everything after the first page (header and schema stay readable)."""
    size = path.stat().st_size
    assert size > 4096 * 2, size
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(size - 4096))


def test_sound_files_pass(tmp_path: Path) -> None:
    _make(tmp_path)
    assert quick_check(tmp_path / "hub.db") is None
    assert quick_check(tmp_path / "audit.db") is None
    check_data_dir(tmp_path)


def test_a_garbage_file_and_damaged_pages_are_named(tmp_path: Path) -> None:
    _make(tmp_path)
    _damage_pages(tmp_path / "audit.db")
    with pytest.raises(ConfigError, match=r"audit\.db is damaged \(.+\): stop the hub") as err:
        check_data_dir(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "hub.db").write_bytes(b"not a database, not at all" * 200)
    with pytest.raises(ConfigError, match=r"hub\.db is damaged \(file is not a database\)"):
        check_data_dir(tmp_path)  # hub.db is checked first


def test_firmware_db_is_checked(tmp_path: Path) -> None:
    _make(tmp_path)
    (tmp_path / "firmware").mkdir()
    (tmp_path / "firmware" / "firmware.db").write_bytes(os.urandom(8192))
    with pytest.raises(ConfigError, match=r"firmware\.db is damaged.*roll-out history"):
        check_data_dir(tmp_path)


def test_an_empty_audit_trail_next_to_enrolled_nodes_is_refused(tmp_path: Path) -> None:
    _make(tmp_path, nodes=3)
    audit = tmp_path / "audit.db"
    audit.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"audit\.db is empty but .*hub\.db lists 3 node"):
        check_data_dir(tmp_path)
    audit.unlink()
    with pytest.raises(ConfigError, match=r"audit\.db is missing .*--accept-empty-audit"):
        check_data_dir(tmp_path)
    check_data_dir(tmp_path, accept_empty_audit=True)


def test_an_empty_audit_trail_without_nodes_is_a_new_hub(tmp_path: Path) -> None:
    _make(tmp_path, nodes=0, events=0)
    (tmp_path / "audit.db").write_bytes(b"")
    check_data_dir(tmp_path)
    check_data_dir(tmp_path / "never-started")  # first start: nothing to check


def test_diagnose_names_the_file_or_says_where_to_look(tmp_path: Path) -> None:
    _make(tmp_path)
    err = sqlite3.DatabaseError("database disk image is malformed")
    assert "run 'hub start' to check" in diagnose(tmp_path, err)
    _damage_pages(tmp_path / "audit.db")
    assert diagnose(tmp_path, err).startswith(f"{tmp_path / 'audit.db'} is damaged")


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[Path]:
    """hub.db with another process holding an exclusive lock on it (as a hub, a backup
    tool or an admin's ``sqlite3`` shell in a long transaction can)."""
    _make(tmp_path)
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


def test_a_sound_database_locked_by_another_process_is_not_called_damaged(
    held_lock: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dbcheck, "BUSY_TIMEOUT", 0.3, raising=False)
    with pytest.raises(ConfigError) as err:
        check_data_dir(held_lock)
    line = str(err.value)
    assert "damaged" not in line and "restore" not in line, line
    assert line.startswith(f"{held_lock / 'hub.db'} is in use by another process"), line


def test_diagnose_of_a_busy_error_says_busy_not_restore(held_lock: Path) -> None:
    line = diagnose(held_lock, sqlite3.OperationalError("database is locked"))
    assert "busy" in line and "restore" not in line, line


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """Sound databases on a file system remounted read-only (as the kernel does to a
    failing SD card or eMMC): a real tmpfs, unmounted at the end."""
    require_root("mounts a tmpfs")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        _make(mnt)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_sound_database_on_a_read_only_file_system_is_not_called_damaged(
    read_only_dir: Path,
) -> None:
    with pytest.raises(ConfigError) as err:
        check_data_dir(read_only_dir)
    line = str(err.value)
    assert "damaged" not in line and "restore" not in line, line
    assert line.startswith(f"{read_only_dir / 'hub.db'} cannot be opened"), line
    assert "read-write" in line and "\n" not in line, line


def test_diagnose_of_a_full_disk_does_not_say_restore(tmp_path: Path) -> None:
    _make(tmp_path)
    line = diagnose(tmp_path, sqlite3.OperationalError("database or disk is full"))
    assert "free space" in line and "restore" not in line, line
