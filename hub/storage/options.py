"""``hub start --storage``: which storage engine, and what PostgreSQL needs to be opened.

Without ``--storage`` nothing changes (the data directory's SQLite files).
``--storage postgresql://USER@HOST:PORT/DB`` shares one database among hubs: its
password comes from ``--storage-password-file`` or libpq's ``PGPASSFILE`` (never
the URL), and the CA passphrase is required, since the CA keys live in the
database encrypted with it (hub/cakeys.py). docs/storage.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hub.storage import is_postgres
from hub.storage.api import Storage, StorageError
from remoteler.errors import ConfigError, UsageError


def add_storage_flags(start: argparse.ArgumentParser) -> None:
    start.add_argument(
        "--storage",
        metavar="URL",
        default=None,
        help="where the hub keeps its state: sqlite (the data directory) or "
        "postgresql://USER@HOST:PORT/DB shared by several hubs, no password in it "
        "(default: sqlite; docs/storage.md)",
    )
    start.add_argument(
        "--storage-password-file",
        metavar="FILE",
        default=None,
        help="the PostgreSQL password, first line of FILE (default: none, libpq's "
        "PGPASSFILE or ~/.pgpass)",
    )


def check_storage_args(args: argparse.Namespace, passphrase: bytes | None) -> None:
    """One line for what is missing before anything is opened."""
    if args.storage_password_file and not is_postgres(args.storage):
        raise UsageError("--storage-password-file is for --storage postgresql://... only")
    if is_postgres(args.storage) and passphrase is None:
        raise UsageError(
            "--storage postgresql://... needs --ca-passphrase-file FILE: the CA keys in the "
            "shared database are encrypted with it (every hub of the cluster gives the same)"
        )


async def open_hub_storage(args: argparse.Namespace) -> Storage:
    """The storage ``--storage`` names (default: SQLite in the data dir), opened and
    migrated; its errors are one line (:class:`ConfigError`)."""
    from hub.storage import open_storage

    if is_postgres(args.storage):
        import importlib.util

        missing = [m for m in ("psycopg", "psycopg_pool") if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError(
                f"missing {', '.join(missing)}: --storage postgresql:// needs "
                "\"pip install 'remoteler[hub]'\""
            )
    password_file = Path(args.storage_password_file) if args.storage_password_file else None
    try:
        return await open_storage(
            args.storage,
            Path(args.data_dir),
            password_file=password_file,
            accept_empty_audit=args.accept_empty_audit,
        )
    except StorageError as exc:
        raise ConfigError(f"storage: {exc}") from None
