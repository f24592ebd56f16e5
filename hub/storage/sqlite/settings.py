"""Small cluster-wide values: the ``settings`` table of hub.db (key -> text).

Keys in use: ``cluster`` (the cluster name). Before hub/storage the name was only
``DATA/cluster.json``; at open its value is copied in. The file stays, and a
cluster name stored while it is missing writes it (``{"cluster": NAME}``): it
marks the directory as a hub data dir for the tools that still read it.
"""

from __future__ import annotations

import json
from pathlib import Path

from hub.storage.api import StorageError
from hub.storage.sqlite.txdb import TxDb
from remoteler.fsutil import write_file_atomic

CLUSTER = "cluster"
CLUSTER_FILE = Path("cluster.json")


class SQLiteSettings:
    def __init__(self, db: TxDb, data_dir: Path) -> None:
        self._db = db
        self._data_dir = data_dir

    def _mirror(self, key: str, value: str) -> None:
        path = self._data_dir / CLUSTER_FILE
        if key == CLUSTER and not path.exists():
            write_file_atomic(path, json.dumps({"cluster": value}).encode(), 0o644)

    async def get(self, key: str) -> str | None:
        row = await self._db.fetchone("SELECT value FROM settings WHERE key = ?", (key,))
        return str(row[0]) if row is not None else None

    async def put(self, key: str, value: str) -> None:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )
        self._mirror(key, value)

    async def put_if_absent(self, key: str, value: str) -> str:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, value)
            )
            async with conn.execute("SELECT value FROM settings WHERE key = ?", (key,)) as cur:
                row = await cur.fetchone()
        stored = str(row[0]) if row is not None else value
        self._mirror(key, stored)
        return stored

    async def import_cluster_file(self, data_dir: Path) -> str | None:
        """Copy ``cluster.json``'s name in if the table has none; the stored name."""
        path = data_dir / CLUSTER_FILE
        if not path.exists():
            return await self.get(CLUSTER)
        try:
            name = str(json.loads(path.read_text())["cluster"])
        except (OSError, ValueError, KeyError, TypeError):
            raise StorageError(
                f"{path} is damaged: restore it from a backup, or write "
                '{"cluster": "NAME"} with the --cluster-name of the first start'
            ) from None
        return await self.put_if_absent(CLUSTER, name)
