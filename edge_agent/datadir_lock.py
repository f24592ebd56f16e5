"""One agent per data directory: an exclusive ``flock`` on ``DIR/agent.lock``.

Two agents on one data dir would each dial with the same node certificate, evict
each other's tunnel every second or two, and write the same audit sequence numbers
into one outbox. ``edge-agent start`` takes this lock before it reads or writes
anything in the directory and holds it until the process ends (the kernel drops it
then, even after a crash or ``kill -9``: no stale lock to clean up). The file holds
the holder's PID, for the second process's error line.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from remoteler.errors import ConfigError

LOCK_FILE = "agent.lock"


class DataDirLock:
    """An exclusive lock on a data directory; :meth:`acquire` it, :meth:`release` at exit."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: Path, pid: int | None = None) -> DataDirLock:
        """Lock ``data_dir`` (created 0700 if missing) or raise :class:`ConfigError`
        naming the process that holds it."""
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / LOCK_FILE
        try:
            # O_NOFOLLOW: as root, a planted symlink would have us truncate its target.
            # O_CLOEXEC: no child (a session's shell, a firmware hook) inherits the lock.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            raise ConfigError(
                f"cannot open {path}: {why}; check --data-dir and its permissions"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"PID {holder}" if holder else "another process"
            raise ConfigError(
                f"another edge-agent ({who}) is running on data dir {data_dir}: "
                "stop it first, or give this one its own --data-dir"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot lock {path}: {exc.strerror}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid() if pid is None else pid}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _read_pid(fd: int) -> int | None:
    """The PID the holder wrote, or None if it has not yet (or the file is not ours)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
