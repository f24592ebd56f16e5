"""Writing files atomically and checking a secret file's mode (standard library only).

The agent's light modules (``edge_agent.health``, ``edge_agent.slots``) and
``firmware-tools provision`` use these without loading :mod:`remoteler.ca`
(and with it ``cryptography``), which re-exports them.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

__all__ = ["check_secret_file_mode", "write_file_atomic", "write_secret_file"]


def write_file_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically with permission bits ``mode``.

    A temporary file with a random name is created next to ``path``
    (``O_EXCL|O_NOFOLLOW``, ``mode``), fsynced and renamed over ``path``, so
    readers see either the old or the new content and a planted file or
    symlink is never written through; the temporary file is removed on failure.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits; never adds any
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_secret_file(path: Path, data: bytes) -> None:
    """Atomically write a secret readable only by its owner (mode 0600)."""
    write_file_atomic(path, data, 0o600)


def check_secret_file_mode(
    path: Path, error: type[Exception] = PermissionError, what: str | None = None
) -> None:
    """Raise ``error`` if ``path`` grants any access to group or other (or is missing).

    Like OpenSSH's "UNPROTECTED PRIVATE KEY FILE" check, any group/other bit
    (not only read) is refused. ``what`` names the file in the message
    (default ``secret file PATH``).
    """
    what = what or f"secret file {path}"
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise error(
            f"{what} is accessible by group/other (mode {stat.S_IMODE(mode):04o}); "
            f"run 'chmod 600 {path}' and check who may have copied it"
        )
