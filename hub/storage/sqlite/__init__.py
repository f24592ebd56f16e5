"""The embedded engine: SQLite files (WAL) in the hub's data directory."""

from __future__ import annotations

from pathlib import Path

from hub.storage.sqlite.engine import SQLiteStorage

__all__ = ["SQLiteStorage", "open_sqlite"]


async def open_sqlite(data_dir: Path) -> SQLiteStorage:
    """The data dir's storage, created and migrated as needed (docs/storage.md)."""
    return await SQLiteStorage.open(data_dir)
