"""SQLite's errors as the storage's own, each one line naming the file and what to do.

What an error says about the file decides the words: only SQLITE_CORRUPT and
SQLITE_NOTADB say its pages are bad ("damaged: restore it from a backup"). A
file another process holds locked (SQLITE_BUSY, SQLITE_LOCKED), a full disk, a
file system remounted read-only (as the kernel does to a failing SD card) or a
permission say nothing about its pages, and their line never says "restore": an
admin who restores a sound file over a busy one loses what was written since the
backup. (Formerly hub/dbcheck.py; docs/tctl.md "A damaged database".)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from hub.storage.api import Conflict, StorageError, Unavailable

Trouble = Literal["damaged", "busy", "full", "unwritable"]

#: SQLite primary result codes (https://sqlite.org/rescode.html) and what they say
_CODES: dict[int, Trouble] = {
    sqlite3.SQLITE_CORRUPT: "damaged",
    sqlite3.SQLITE_NOTADB: "damaged",
    sqlite3.SQLITE_BUSY: "busy",
    sqlite3.SQLITE_LOCKED: "busy",
    sqlite3.SQLITE_FULL: "full",
    sqlite3.SQLITE_READONLY: "unwritable",
    sqlite3.SQLITE_CANTOPEN: "unwritable",
    sqlite3.SQLITE_PERM: "unwritable",
    sqlite3.SQLITE_IOERR: "unwritable",
    sqlite3.SQLITE_AUTH: "unwritable",
}

#: what moving each file aside loses, for the damaged-file line
IF_MOVED = {
    "hub.db": "moving it aside loses users, roles and tokens, and every device must join again",
    "audit.db": "or move it aside and start with --accept-empty-audit to begin a new audit trail",
    "firmware.db": "or move it aside (only roll-out history is lost)",
}


def trouble(exc: sqlite3.Error) -> Trouble | None:
    """What ``exc`` says about its file; None: nothing known (a bug, a constraint)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in _CODES:
        return _CODES[code & 0xFF]
    text = str(exc)  # errors raised without a code (aiosqlite's own, older wheels)
    if "malformed" in text or "not a database" in text:
        return "damaged"
    if "locked" in text or "busy" in text:
        return "busy"
    if "disk is full" in text:
        return "full"
    if "readonly" in text or "unable to open" in text:
        return "unwritable"
    return None


def damaged(path: Path, detail: str) -> StorageError:
    """The line for a file whose pages SQLite found bad (``detail``: its words)."""
    moved = IF_MOVED.get(path.name)
    return StorageError(
        f"{path} is damaged ({detail}): stop the hub and restore it from a backup"
        + (f"; {moved}" if moved else "")
    )


def storage_error(path: Path, exc: sqlite3.Error, *, doing: str = "used") -> StorageError:
    """The storage's error for ``exc`` met on ``path`` (``doing``: "opened" at start)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return Conflict(f"{path.name}: {exc}")
    found = trouble(exc)
    if found == "damaged":
        return damaged(path, str(exc))
    if found == "busy":
        return Unavailable(
            f"{path} is in use by another process ({exc}; a hub under heavy load, or a tool "
            "holding its lock, e.g. a backup or a sqlite3 shell): stop that process, or try again"
        )
    if found == "full":
        return StorageError(
            f"{path} cannot be written ({exc}): free space on its file system, then try "
            "again (the file itself may well be sound)"
        )
    if found == "unwritable":
        return StorageError(
            f"{path} cannot be {doing} ({exc}): check that its file system is mounted "
            "read-write and not full, and that this user may write the file and its "
            "directory (the file itself may well be sound)"
        )
    return StorageError(f"{path}: {exc}")


def check_answer(path: Path, rows: Sequence[Sequence[object]]) -> None:
    """Raise the damaged-file line unless ``PRAGMA quick_check`` answered ``ok``."""
    if [tuple(r) for r in rows] == [("ok",)]:
        return
    first = str(rows[0][0]).splitlines()[0][:200] if rows else "no answer"
    more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
    raise damaged(path, first + more)
