"""Part B of the SQLite engine, opened as one: audit, CAs, rotation, settings, firmware,
trusted keys, blobs (the engine attaches these sections; see engine.py).

Files in the data dir it owns: ``audit.db``, ``firmware/firmware.db``,
``firmware/bundles/``, ``ca/``; in hub.db the tables of ``schema/hub/0003_*.sql``
(on its own connection, so its transactions never interleave with part A's).

Opening imports the state files of a data dir from before hub/storage (rotation,
trusted keys, cluster name: the modules say what each does) and refuses an empty
audit trail beside enrolled nodes unless ``accept_empty_audit``.

Other processes writing the same files (a second Storage, tctl) are noticed by
``PRAGMA data_version`` once a second: rotation, trusted keys and firmware changes
are then published on the engine's feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hub.storage.api import Change, StorageError, Topic
from hub.storage.feed import ChangeFeed
from hub.storage.sqlite.audit import AUDIT_DB, SQLiteAuditLog, is_empty_file
from hub.storage.sqlite.authorities import CAFiles, FileAuthorities
from hub.storage.sqlite.blobs import FileBlobs
from hub.storage.sqlite.errors import check_answer
from hub.storage.sqlite.firmware import SQLiteFirmware
from hub.storage.sqlite.rotation import SQLiteRotation
from hub.storage.sqlite.settings import SQLiteSettings
from hub.storage.sqlite.trusted import SQLiteTrustedKeys
from hub.storage.sqlite.txdb import TxDb

log = logging.getLogger("remoteler.hub.storage")

HUB_DB = "hub.db"
#: seconds between two looks for other processes' writes
POLL = 1.0


@dataclass
class PartB:
    hub_db: TxDb
    audit: SQLiteAuditLog
    authorities: FileAuthorities
    rotation: SQLiteRotation
    settings: SQLiteSettings
    firmware: SQLiteFirmware
    trusted_keys: SQLiteTrustedKeys
    blobs: FileBlobs
    feed: ChangeFeed
    _watch: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._watch is None:
            self._watch = asyncio.create_task(self._watch_others(), name="storage-watch-b")

    async def _watch_others(self) -> None:
        """Publish what other processes changed (no change: two tiny reads a second)."""
        hub_version = await self.hub_db.data_version()
        fw_version = await self.firmware.db.data_version()
        stamps = await self._stamps()
        while True:
            await asyncio.sleep(POLL)
            try:
                v = await self.firmware.db.data_version()
                if v != fw_version:
                    fw_version = v
                    self.feed.publish(Change("firmware", "*"))
                v = await self.hub_db.data_version()
                if v != hub_version:  # part A's writes too: compare what is ours
                    hub_version = v
                    now = await self._stamps()
                    for topic, stamp in now.items():
                        if stamps.get(topic) != stamp:
                            self.feed.publish(Change(topic, "*"))
                    stamps = now
            except StorageError as exc:
                log.warning("change watch: %s", exc)

    async def _stamps(self) -> dict[Topic, str]:
        rotation = await self.rotation.get()
        keys = await self.trusted_keys.all()
        digest = hashlib.sha256("\n".join(k.fingerprint for k in keys).encode()).hexdigest()
        return {"rotation": str(rotation.revision), "trusted": digest}

    async def check(self) -> None:
        """``PRAGMA quick_check`` of audit.db and firmware.db (hub.db: the engine's)."""
        for db in (self.audit._db, self.firmware.db):
            check_answer(db.path, await db.fetchall("PRAGMA quick_check"))

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        for db in (self.audit, self.firmware, self.hub_db):
            with contextlib.suppress(Exception):
                await db.close()


def refuse_lost_trail(data_dir: Path) -> None:
    """An audit.db missing or empty beside a hub.db that lists nodes: the trail was lost
    (a restore of hub.db alone, a disk wiped under the hub); opening would make a new
    empty one that every later start takes as sound."""
    import sqlite3

    audit, hub_db = data_dir / AUDIT_DB, data_dir / HUB_DB
    if not hub_db.exists() or not is_empty_file(audit):
        return
    try:
        conn = sqlite3.connect(f"file:{hub_db}?mode=ro", uri=True, timeout=10)
        try:
            nodes = int(conn.execute("SELECT count(*) FROM nodes").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return  # no nodes table yet (a hub that never started), or the check reports it
    if nodes:
        raise StorageError(
            f"{audit} is {'missing' if not audit.exists() else 'empty'} but {hub_db} "
            f"lists {nodes} node(s): the audit trail was lost; restore {AUDIT_DB} "
            "from a backup, or start with --accept-empty-audit to begin a new one"
        )


async def open_part_b(
    data_dir: Path,
    feed: ChangeFeed,
    *,
    migrate_hub: bool = False,
    accept_empty_audit: bool = False,
    now: float | None = None,
) -> PartB:
    """Open part B's files in ``data_dir`` (hub.db already migrated by the engine unless
    ``migrate_hub``) and import the state files of an older data dir."""
    if not accept_empty_audit:
        refuse_lost_trail(data_dir)
    now = time.time() if now is None else now
    opened: list[TxDb | SQLiteAuditLog | SQLiteFirmware] = []
    try:
        hub_db = await TxDb.open(data_dir / HUB_DB, "hub" if migrate_hub else None)
        opened.append(hub_db)
        audit = await SQLiteAuditLog.open(data_dir)
        opened.append(audit)
        firmware = await SQLiteFirmware.open(data_dir, feed)
        opened.append(firmware)
        files = CAFiles(data_dir)
        part = PartB(
            hub_db=hub_db,
            audit=audit,
            authorities=FileAuthorities(files, hub_db),
            rotation=SQLiteRotation(hub_db, files, feed),
            settings=SQLiteSettings(hub_db, data_dir),
            firmware=firmware,
            trusted_keys=SQLiteTrustedKeys(hub_db, feed),
            blobs=FileBlobs.open(data_dir),
            feed=feed,
        )
        await part.rotation.import_files(data_dir)
        await part.trusted_keys.import_file(data_dir, now)
        await part.settings.import_cluster_file(data_dir)
    except BaseException:
        for db in reversed(opened):
            with contextlib.suppress(Exception):
                await db.close()
        raise
    return part


class _Engine(Protocol):
    """What :func:`attach` needs of the engine (engine.py's SQLiteStorage)."""

    feed: ChangeFeed
    checks: list[Callable[[], Awaitable[None]]]
    closers: list[Callable[[], Awaitable[None]]]


async def attach(storage: Any, data_dir: Path, *, accept_empty_audit: bool = False) -> PartB:
    """Open part B and attach its sections to the engine (its ONE block in engine.py)."""
    engine: _Engine = storage
    part = await open_part_b(data_dir, engine.feed, accept_empty_audit=accept_empty_audit)
    storage.audit = part.audit
    storage.authorities = part.authorities
    storage.rotation = part.rotation
    storage.settings = part.settings
    storage.firmware = part.firmware
    storage.trusted_keys = part.trusted_keys
    storage.blobs = part.blobs
    engine.checks.append(part.check)
    engine.closers.append(part.close)
    part.start()
    return part
