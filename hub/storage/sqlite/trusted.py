"""Trusted firmware signing keys: the ``trusted_keys`` table of hub.db.

Before hub/storage they were the lines of ``DATA/firmware/trusted.pub``. At open, a
``trusted.pub`` there is imported (keys already in the table are kept as they are)
and renamed ``trusted.pub.migrated``; a line that is not an ``ssh-ed25519`` key
stops the start with the file and line named, so no key is silently dropped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from hub.storage.api import Change, StorageError, TrustedKey
from hub.storage.feed import ChangeFeed
from hub.storage.sqlite.txdb import TxDb

log = logging.getLogger("remoteler.hub.storage")

TRUST_FILE = Path("firmware") / "trusted.pub"
#: a trust file larger than this is not one (firmware_tools.keys' bound)
MAX_TRUST_FILE = 1 << 20


class SQLiteTrustedKeys:
    def __init__(self, db: TxDb, feed: ChangeFeed) -> None:
        self._db = db
        self._feed = feed

    async def all(self) -> list[TrustedKey]:
        rows = await self._db.fetchall(
            "SELECT fingerprint, public_key, comment, added FROM trusted_keys"
            " ORDER BY added, fingerprint"
        )
        return [TrustedKey(r[0], r[1], r[2], r[3]) for r in rows]

    async def add(self, key: TrustedKey) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "INSERT OR IGNORE INTO trusted_keys (fingerprint, public_key, comment, added)"
                " VALUES (?, ?, ?, ?)",
                (key.fingerprint, key.public_key, key.comment, key.added),
            )
            done = cur.rowcount > 0
        if done:
            self._feed.publish(Change("trusted", key.fingerprint))
        return done

    async def remove(self, fingerprint: str) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "DELETE FROM trusted_keys WHERE fingerprint = ?", (fingerprint,)
            )
            done = cur.rowcount > 0
        if done:
            self._feed.publish(Change("trusted", fingerprint))
        return done

    async def import_file(self, data_dir: Path, now: float) -> int:
        """Take ``firmware/trusted.pub`` in; how many keys were new."""
        path = data_dir / TRUST_FILE
        if not path.exists():
            return 0
        keys = parse_trust_file(path, now)
        added = 0
        for key in keys:
            added += await self.add(key)
        os.replace(path, path.with_name(path.name + ".migrated"))
        log.info("trusted firmware keys moved into hub.db", extra={"from": str(path), "new": added})
        return added


def parse_trust_file(path: Path, now: float) -> list[TrustedKey]:
    """The keys of a trust file (blank lines and ``#`` comments skipped)."""
    from firmware_tools.keys import key_id, load_public_key
    from remoteler.errors import ConfigError

    try:
        if path.stat().st_size > MAX_TRUST_FILE:
            raise StorageError(f"{path} is larger than {MAX_TRUST_FILE} bytes: not a trust file")
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from None
    keys: list[TrustedKey] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            pub = load_public_key(line)
        except ConfigError as exc:
            raise StorageError(f"{path} line {n}: {exc}; fix or remove that line") from None
        fields = line.split()
        keys.append(
            TrustedKey(
                key_id(pub), f"{fields[0]} {fields[1]}", " ".join(fields[2:]), now + n * 1e-6
            )
        )
    return keys
