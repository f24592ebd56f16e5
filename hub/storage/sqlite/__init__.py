"""The embedded engine: SQLite files (WAL) in the hub's data directory."""

from __future__ import annotations

from pathlib import Path

from hub.storage.sqlite.engine import SQLiteStorage

__all__ = ["SQLiteStorage", "open_sqlite"]


async def open_sqlite(data_dir: Path, *, accept_empty_audit: bool = False) -> SQLiteStorage:
    """The data dir's storage, created and migrated as needed (docs/storage.md);
    ``accept_empty_audit``: begin a new audit trail where the old one was lost."""
    return await SQLiteStorage.open(data_dir, accept_empty_audit=accept_empty_audit)
