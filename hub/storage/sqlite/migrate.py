"""Numbered schema migrations for one SQLite file, tracked in ``PRAGMA user_version``.

The files are ``hub/storage/sqlite/schema/<db>/NNNN_what.sql``; migration N
brings the file from version N-1 to N and runs in one transaction with the
version bump, so a crash leaves the file at N-1 or N. A file whose version is
above the newest migration here was written by a newer hub: refused
(:class:`~hub.storage.api.TooNew`), never touched.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import aiosqlite

from hub.storage.api import StorageError, TooNew
from hub.storage.sqlite.errors import storage_error, trouble

_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(db: str) -> list[Migration]:
    """The migrations of database ``db`` (``hub``, ``audit``, ``firmware``), in order."""
    found: list[Migration] = []
    folder = resources.files("hub.storage.sqlite") / "schema" / db
    for entry in folder.iterdir():
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text()))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise RuntimeError(f"schema/{db}: migration {expected} is missing")
    return found


async def user_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: aiosqlite.Connection, db: str, path: str) -> list[str]:
    """Apply the missing migrations to ``conn``; the names of those applied."""
    steps = migrations(db)
    have = await user_version(conn)
    newest = steps[-1].version if steps else 0
    if have > newest:
        raise TooNew(
            f"{path} is at schema version {have}, newer than this hub's {newest}: "
            "run the newer hub (a database is never downgraded)"
        )
    applied: list[str] = []
    for step in steps[have:]:
        try:
            await conn.execute("BEGIN IMMEDIATE")
            # executescript would commit first; run the statements one by one instead
            for statement in _statements(step.sql):
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {step.version}")
            await conn.commit()
        except Exception as exc:
            await conn.rollback()
            if isinstance(exc, sqlite3.Error) and trouble(exc) is not None:
                raise storage_error(Path(path), exc, doing="opened") from None
            raise StorageError(f"{path}: migration {step.name} failed: {exc}") from exc
        applied.append(step.name)
    return applied


def _statements(sql: str) -> list[str]:
    """Split a migration file on ``;`` at line ends (no triggers or strings with ``;\\n``)."""
    return [s.strip() for s in re.split(r";\s*\n", sql + "\n") if s.strip()]
