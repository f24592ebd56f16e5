"""The SQLite engine: the sections composed over the SQLite files of the data dir.

(Part B's branch: a minimal engine of the same shape as part A's, which holds
users, roles, tokens, invites, the login guard, nodes, presence and locks; the
lead keeps part A's file and its ``# -- sections of part B (sqlb) --`` block
becomes the one call to :func:`hub.storage.sqlite.part_b.attach` below.)
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from hub.storage.api import (
    AuditLog,
    Authorities,
    Blobs,
    Change,
    Firmware,
    Invites,
    Locks,
    LoginGuards,
    Nodes,
    PresenceTable,
    Roles,
    Rotation,
    Settings,
    StorageError,
    Tokens,
    TrustedKeys,
    Users,
)
from hub.storage.feed import ChangeFeed
from hub.storage.sqlite.txdb import TxDb

HUB_DB = "hub.db"


class SQLiteStorage:
    """:class:`hub.storage.api.Storage` on SQLite files in one data directory."""

    engine = "sqlite"
    # -- sections of part A (sqla): attached by part A's engine.py --
    users: Users
    roles: Roles
    tokens: Tokens
    invites: Invites
    nodes: Nodes
    presence: PresenceTable
    locks: Locks
    login_guards: LoginGuards
    # -- sections of part B (sqlb): declared here, attached in open --
    audit: AuditLog
    authorities: Authorities
    rotation: Rotation
    settings: Settings
    firmware: Firmware
    trusted_keys: TrustedKeys
    blobs: Blobs

    def __init__(self, db: TxDb, path: Path) -> None:
        self._db = db
        self.path = path
        self.feed = ChangeFeed()
        #: each section's own integrity check (part B's files), run by :meth:`check`
        self.checks: list[Callable[[], Awaitable[None]]] = []
        #: each section's own close (part B's files), run by :meth:`close`
        self.closers: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    async def open(cls, data_dir: Path, *, accept_empty_audit: bool = False) -> SQLiteStorage:
        from hub.storage.sqlite import part_b

        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # part B checks audit.db before hub.db exists-or-not changes anything
        if not accept_empty_audit:
            part_b.refuse_lost_trail(data_dir)
        db = await TxDb.open(data_dir / HUB_DB, "hub")
        storage = cls(db, data_dir / HUB_DB)
        try:
            # -- sections of part B (sqlb) --
            await part_b.attach(storage, data_dir, accept_empty_audit=True)
            # -- end of part B --
        except BaseException:
            await db.close()
            raise
        return storage

    def changes(self) -> AsyncIterator[Change]:
        return self.feed.subscribe()

    async def check(self) -> None:
        try:
            rows = await self._db.fetchall("PRAGMA quick_check")
        except StorageError as exc:
            rows = [(str(exc),)]  # type: ignore[list-item]
        if [tuple(r) for r in rows] != [("ok",)]:
            first = str(rows[0][0]).splitlines()[0][:200] if rows else "no answer"
            raise StorageError(
                f"{self.path} is damaged ({first}): stop the hub and restore it from a backup"
            )
        for check in self.checks:
            await check()

    async def close(self) -> None:
        self.feed.close()
        for closer in self.closers:
            with contextlib.suppress(sqlite3.Error, StorageError):
                await closer()
        await self._db.close()
