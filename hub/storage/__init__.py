"""The hub's state: one interface (:mod:`hub.storage.api`), two engines.

``open_storage`` picks the engine from the ``--storage`` value: nothing (or
``sqlite``) is the embedded SQLite engine in the data directory,
``postgresql://...`` the PostgreSQL engine (docs/storage.md).
"""

from __future__ import annotations

from pathlib import Path

from hub.storage.api import Storage, StorageError

__all__ = ["Storage", "StorageError", "is_postgres", "open_storage"]


def is_postgres(spec: str | None) -> bool:
    """Whether a ``--storage`` value names the PostgreSQL engine."""
    return bool(spec) and str(spec).startswith(("postgresql://", "postgres://"))


async def open_storage(
    spec: str | None,
    data_dir: Path,
    *,
    password_file: Path | None = None,
    accept_empty_audit: bool = False,
) -> Storage:
    """The engine ``spec`` names, opened and migrated; its errors are one line.
    ``accept_empty_audit``: SQLite begins a new audit.db where the old one was lost."""
    if not spec or spec == "sqlite":
        from hub.storage.sqlite import open_sqlite

        return await open_sqlite(data_dir, accept_empty_audit=accept_empty_audit)
    if is_postgres(spec):
        from hub.storage.postgres import open_postgres

        return await open_postgres(spec, password_file=password_file)
    raise StorageError(
        f"unknown --storage {spec.split('://')[0]!r}: give sqlite or postgresql://USER@HOST/DB"
    )
