"""CA rotation state in hub.db: one row with a revision for compare-and-set, and the acks.

Before hub/storage the state was ``DATA/ca/rotation.json`` (under an flock) and the
acks ``DATA/rotation-nodes.json``. At open, while the row was never written
(revision 0), those files are imported in one transaction and then renamed
``*.migrated`` (never deleted: they are the operator's to remove).

:meth:`SQLiteRotation.advance` takes hub.db's write lock (``BEGIN IMMEDIATE``),
compares the revision, writes the CA files it is given (``put``: the key last),
stores the states with revision + 1 and commits; only then are the ``remove``
CAs' files deleted. Two hubs or a hub and tctl never both advance from one
revision: the second gets :class:`~hub.storage.api.Conflict`. A crash between the
CA files and the commit leaves the old state with the new files: a ``next`` CA
that the state does not use yet, or a ``current`` CA equal to ``next`` (which the
hub reads as "promoted": hub/rotation/store.py's rule).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hub.storage.api import CAKindName, CASlot, Change, Conflict, RotationRecord, StoredCA
from hub.storage.feed import ChangeFeed
from hub.storage.sqlite.authorities import CAFiles
from hub.storage.sqlite.txdb import TxDb

log = logging.getLogger("remoteler.hub.storage")

STATE_FILE = Path("ca") / "rotation.json"
ACKS_FILE = Path("rotation-nodes.json")
MIGRATED = ".migrated"


class SQLiteRotation:
    def __init__(self, db: TxDb, files: CAFiles, feed: ChangeFeed) -> None:
        self._db = db
        self._files = files
        self._feed = feed

    async def get(self) -> RotationRecord:
        row = await self._db.fetchone("SELECT states, revision FROM rotation WHERE id = 1")
        if row is None:
            return RotationRecord({}, 0)
        return RotationRecord(json.loads(row["states"]), int(row["revision"]))

    async def advance(
        self,
        expect_revision: int,
        states: Mapping[str, Mapping[str, object]],
        put: Sequence[StoredCA] = (),
        remove: Sequence[tuple[CAKindName, CASlot]] = (),
    ) -> RotationRecord:
        text = json.dumps({k: dict(v) for k, v in states.items()}, sort_keys=True)
        async with self._db.tx() as conn:
            async with conn.execute("SELECT revision FROM rotation WHERE id = 1") as cur:
                row = await cur.fetchone()
            have = int(row[0]) if row else 0
            if have != expect_revision:
                raise Conflict(
                    f"the CA rotation moved on (revision {have}, not {expect_revision}): "
                    "re-read it and decide again"
                )
            for ca in put:
                self._files.write(ca)
            await conn.execute(
                "INSERT INTO rotation (id, states, revision) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET states = excluded.states,"
                " revision = excluded.revision",
                (text, have + 1),
            )
        for kind, slot in remove:
            self._files.remove(kind, slot)
        self._feed.publish(Change("rotation", str(have + 1)))
        return RotationRecord(json.loads(text), have + 1)

    async def acks(self) -> dict[str, str]:
        rows = await self._db.fetchall("SELECT node_id, revision FROM rotation_acks")
        return {str(r["node_id"]): str(r["revision"]) for r in rows}

    async def ack(self, node_id: str, revision: str) -> None:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO rotation_acks (node_id, revision) VALUES (?, ?)"
                " ON CONFLICT (node_id) DO UPDATE SET revision = excluded.revision",
                (node_id, revision),
            )

    async def forget_acks(self) -> None:
        async with self._db.tx() as conn:
            await conn.execute("DELETE FROM rotation_acks")

    async def import_files(self, data_dir: Path) -> bool:
        """Take ``ca/rotation.json`` and ``rotation-nodes.json`` in (once); True if done."""
        state_file, acks_file = data_dir / STATE_FILE, data_dir / ACKS_FILE
        if not state_file.exists() and not acks_file.exists():
            return False
        states = _read_json(state_file)
        acks = _read_json(acks_file)
        async with self._db.tx() as conn:
            async with conn.execute("SELECT revision FROM rotation WHERE id = 1") as cur:
                row = await cur.fetchone()
            if row is not None and int(row[0]) > 0:
                return False  # imported before (the files came back from a backup?)
            await conn.execute(
                "INSERT INTO rotation (id, states, revision) VALUES (1, ?, 1)"
                " ON CONFLICT (id) DO UPDATE SET states = excluded.states, revision = 1",
                (json.dumps(states, sort_keys=True),),
            )
            await conn.executemany(
                "INSERT OR REPLACE INTO rotation_acks (node_id, revision) VALUES (?, ?)",
                [(str(k), str(v)) for k, v in acks.items()],
            )
        for path in (state_file, acks_file):
            if path.exists():
                os.replace(path, path.with_name(path.name + MIGRATED))
        log.info(
            "CA rotation state moved into hub.db",
            extra={"from": str(state_file), "acks": len(acks)},
        )
        return True


def _read_json(path: Path) -> dict[str, Any]:
    from hub.storage.api import StorageError

    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StorageError(
            f"{path} is unreadable ({exc}): restore it from a backup before this hub "
            "imports it into hub.db"
        ) from None
    if not isinstance(raw, dict):
        raise StorageError(f"{path} is not a JSON object: restore it from a backup")
    return raw
