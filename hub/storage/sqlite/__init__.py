"""The embedded engine: SQLite files (WAL) in the hub's data directory."""

from __future__ import annotations

from pathlib import Path

from hub.storage.api import Storage


async def open_sqlite(data_dir: Path) -> Storage:
    raise NotImplementedError("being built: hub/storage/sqlite")
