"""The SQLite engine: the sections composed over ``hub.db`` (WAL) in the data dir.

``hub.db`` holds users, roles, tokens, invites, the login guard, nodes, presence,
locks, the cluster's hubs and leases, SSO connectors and state (:mod:`.identity`,
:mod:`.nodes`, :mod:`.locks`, :mod:`.hubs`, :mod:`.sso`), migrated at open by
:mod:`.migrate`. The change feed carries this process's own writes as they
commit; writes by another process on the same file (a second hub, an old
``tctl``) are seen by a poll of ``PRAGMA data_version`` every
:data:`POLL_INTERVAL` seconds and published as a gap (every topic ``"*"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiosqlite

from hub.storage.api import (
    AuditLog,
    Authorities,
    Blobs,
    Change,
    Connectors,
    Firmware,
    Hubs,
    Invites,
    Leases,
    Locks,
    LoginGuards,
    Nodes,
    PresenceTable,
    Roles,
    Rotation,
    Settings,
    SSOStates,
    StorageError,
    Tokens,
    TrustedKeys,
    Users,
)
from hub.storage.feed import ChangeFeed
from hub.storage.sqlite import txdb
from hub.storage.sqlite.conn import Conn, mapped
from hub.storage.sqlite.errors import check_answer, storage_error
from hub.storage.sqlite.hubs import SQLiteHubs, SQLiteLeases
from hub.storage.sqlite.identity import (
    SQLiteInvites,
    SQLiteLoginGuards,
    SQLiteRoles,
    SQLiteTokens,
    SQLiteUsers,
)
from hub.storage.sqlite.locks import SQLiteLocks
from hub.storage.sqlite.migrate import migrate, user_version
from hub.storage.sqlite.nodes import SQLiteNodes, SQLitePresence
from hub.storage.sqlite.sso import SQLiteConnectors, SQLiteSSOStates
from remoteler.access import PRESET_ROLES

log = logging.getLogger("remoteler.hub.storage")

#: The hub's main database in its data dir.
HUB_DB = "hub.db"
#: Seconds between two reads of ``PRAGMA data_version`` (writes by other processes).
POLL_INTERVAL = 1.0
#: Columns a hub.db from before they existed lacks (user_version 0): added before
#: migration 0001, whose CREATE TABLE IF NOT EXISTS leaves an existing table alone.
LEGACY_COLUMNS = (
    ("nodes", "recording", "TEXT NOT NULL DEFAULT 'off'"),
    ("nodes", "clock_skew", "REAL"),
)


async def connect(path: Path) -> aiosqlite.Connection:
    """Open (create, 0600) one of the hub's SQLite files in WAL mode."""
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    elif path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)  # holds TOTP seeds: never readable by others
    db = await aiosqlite.connect(path, timeout=txdb.BUSY_TIMEOUT)
    try:
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute(f"PRAGMA busy_timeout={int(txdb.BUSY_TIMEOUT * 1000)}")
        await db.execute("PRAGMA secure_delete=ON")  # a replaced TOTP seed leaves no trace
    except BaseException:  # a damaged file: close, or its thread keeps the process alive
        await db.close()
        raise
    return db


async def _legacy_columns(db: aiosqlite.Connection) -> None:
    if await user_version(db) != 0:
        return
    for table, column, definition in LEGACY_COLUMNS:
        async with db.execute(f"PRAGMA table_info({table})") as cur:
            have = {row[1] for row in await cur.fetchall()}
        if have and column not in have:  # fixed names, never user input
            await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    await db.commit()


class SQLiteStorage:
    """:class:`hub.storage.api.Storage` on SQLite files in one data directory."""

    engine = "sqlite"
    # -- part B's sections (hub/storage/sqlite/part_b.py), attached by open --
    audit: AuditLog
    authorities: Authorities
    rotation: Rotation
    settings: Settings
    firmware: Firmware
    trusted_keys: TrustedKeys
    blobs: Blobs

    def __init__(self, db: aiosqlite.Connection, path: Path, poll: float = POLL_INTERVAL) -> None:
        self._db = db
        self.path = path
        self.feed = ChangeFeed()
        self._conn = Conn(db, path, self.feed)
        self.users: Users = SQLiteUsers(self._conn)
        self.roles: Roles = SQLiteRoles(self._conn)
        self.tokens: Tokens = SQLiteTokens(self._conn)
        self.invites: Invites = SQLiteInvites(self._conn)
        self.login_guards: LoginGuards = SQLiteLoginGuards(self._conn)
        self.nodes: Nodes = SQLiteNodes(self._conn)
        self.presence: PresenceTable = SQLitePresence(self._conn)
        self.locks: Locks = SQLiteLocks(self._conn)
        self.hubs: Hubs = SQLiteHubs(self._conn)
        self.leases: Leases = SQLiteLeases(self._conn)
        self.connectors: Connectors = SQLiteConnectors(self._conn)
        self.sso: SSOStates = SQLiteSSOStates(self._conn)
        # part B's sections are attached by :meth:`open` (hub/storage/sqlite/part_b.py)
        #: each section's own integrity check (part B's files), run by :meth:`check`
        self.checks: list[Callable[[], Awaitable[None]]] = []
        #: each section's own close (part B's files), run by :meth:`close`
        self.closers: list[Callable[[], Awaitable[None]]] = []
        self._poll = poll
        self._watcher: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, data_dir: Path, poll: float = POLL_INTERVAL, *, accept_empty_audit: bool = False
    ) -> SQLiteStorage:
        """Open (create, migrate) the data dir's files. An audit.db lost beside a hub.db
        that lists nodes is refused unless ``accept_empty_audit`` (docs/tctl.md)."""
        from hub.storage.sqlite import part_b

        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = data_dir / HUB_DB
        if not accept_empty_audit:  # before anything below creates a file
            part_b.refuse_lost_trail(data_dir)
        try:
            db = await connect(path)
        except sqlite3.Error as exc:
            raise storage_error(path, exc, doing="opened") from None
        try:
            with mapped(path):
                await _legacy_columns(db)
                await migrate(db, "hub", str(path))
                for role in PRESET_ROLES:
                    await db.execute(
                        "INSERT OR IGNORE INTO roles (name, spec) VALUES (?, ?)",
                        (role.name, json.dumps(role.to_dict())),
                    )
                await db.commit()
        except BaseException:
            await db.close()
            raise
        storage = cls(db, path, poll)
        try:  # -- sections of part B (sqlb): audit, CAs, rotation, settings, firmware, ...
            await part_b.attach(storage, data_dir, accept_empty_audit=True)
        except BaseException:
            await db.close()
            raise
        storage._watcher = asyncio.ensure_future(storage._watch())
        return storage

    def changes(self) -> AsyncIterator[Change]:
        return self.feed.subscribe()

    async def data_version(self) -> int:
        """Changes when another connection commits to ``hub.db`` (not with our writes)."""
        row = await self._conn.one("PRAGMA data_version")
        return int(row[0]) if row else 0

    async def _watch(self) -> None:
        seen = await self.data_version()
        while True:
            await asyncio.sleep(self._poll)
            try:
                version = await self.data_version()
            except StorageError as exc:
                log.warning("change poll failed; will retry: %s", exc)
                continue
            if version != seen:
                seen = version
                self.feed.gap()

    async def check(self) -> None:
        """``PRAGMA quick_check`` of hub.db, then each section's check (part B's files)."""
        with mapped(self.path):  # busy, read-only: not called damaged (.errors)
            async with self._db.execute("PRAGMA quick_check") as cur:
                rows = list(await cur.fetchall())
        check_answer(self.path, rows)
        for check in self.checks:
            await check()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        self.feed.close()
        for closer in self.closers:
            await closer()
        await self._db.close()
