"""edge_agent/datadir_lock.py: an exclusive flock per data dir (real files, real flock)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge_agent.datadir_lock import LOCK_FILE, DataDirLock
from remoteler.errors import ConfigError


def test_second_lock_names_the_holder_and_release_frees_it(tmp_path: Path) -> None:
    data = tmp_path / "agent"
    first = DataDirLock.acquire(data, pid=4242)
    assert (data / LOCK_FILE).read_text() == "4242\n"
    assert data.stat().st_mode & 0o777 == 0o700
    with pytest.raises(ConfigError, match=r"another edge-agent \(PID 4242\) is running on data"):
        DataDirLock.acquire(data)
    first.release()
    second = DataDirLock.acquire(data)
    assert (data / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    second.release()


def test_a_lock_file_left_by_a_dead_agent_is_no_obstacle(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text("999999\n")  # no flock held: the holder died
    DataDirLock.acquire(tmp_path).release()


def test_holder_without_a_pid_yet(tmp_path: Path) -> None:
    first = DataDirLock.acquire(tmp_path)
    (tmp_path / LOCK_FILE).write_text("")  # between its flock and its write
    with pytest.raises(ConfigError, match=r"another edge-agent \(another process\)"):
        DataDirLock.acquire(tmp_path)
    first.release()


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """The agent runs as root: following a planted agent.lock -> /etc/... symlink
    would truncate that file."""
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    data = tmp_path / "agent"
    data.mkdir()
    (data / LOCK_FILE).symlink_to(target)
    with pytest.raises(ConfigError, match=r"cannot open .*agent\.lock: .*symbolic link"):
        DataDirLock.acquire(data)
    assert target.read_text() == "keep me\n"
