"""The CA keys and certificates, as files in the data dir (the layout from before hub/storage).

For SQLite the CAs stay where they were, so an old data dir needs no change and an
operator's backup habits still hold::

    DATA/ca/{kind}_ca.key         the slot "current": OpenSSH private key, or PKCS#8
    DATA/ca/{kind}_ca.pub         encrypted with the CA passphrase (hub/auth/secrets.py)
    DATA/ca/{kind}_ca.crt
    DATA/ca/next/{kind}_ca.*      the slot "next", while a rotation runs

The engine treats the key as opaque bytes (the caller encrypts and decrypts, see
hub/cakeys.py). Each file is written atomically (temporary file, fsync, rename),
the key last, so a key file exists only with its certificate and public key.
Writers take hub.db's write lock (``BEGIN IMMEDIATE``) around their file writes:
that serialises :meth:`FileAuthorities.create` and a rotation's compare-and-set
between processes sharing the data dir.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from hub.storage.api import CAKindName, CASlot, StorageError, StoredCA
from hub.storage.sqlite.txdb import TxDb
from remoteler.fsutil import check_secret_file_mode, write_file_atomic

KINDS: tuple[CAKindName, ...] = get_args(CAKindName)
SLOTS: tuple[CASlot, ...] = get_args(CASlot)


class CAFiles:
    """Reads and writes one data dir's CA files (synchronous: three small files)."""

    def __init__(self, data_dir: Path) -> None:
        self.ca_dir = data_dir / "ca"

    def directory(self, slot: CASlot) -> Path:
        return self.ca_dir if slot == "current" else self.ca_dir / "next"

    def paths(self, kind: CAKindName, slot: CASlot) -> tuple[Path, Path, Path]:
        d = self.directory(slot)
        return d / f"{kind}_ca.key", d / f"{kind}_ca.pub", d / f"{kind}_ca.crt"

    def read(self, kind: CAKindName, slot: CASlot) -> StoredCA | None:
        key, pub, crt = self.paths(kind, slot)
        try:
            private = key.read_bytes()
        except FileNotFoundError:
            return None
        # a CA key others may read is refused, as OpenSSH refuses such a private key
        check_secret_file_mode(key, StorageError, f"CA key {key}")
        try:
            return StoredCA(kind, slot, private, pub.read_text().strip(), crt.read_bytes())
        except OSError as exc:
            raise StorageError(
                f"the {kind} CA in {key.parent} is incomplete ({exc.strerror}: {exc.filename}); "
                "restore the directory from a backup"
            ) from None

    def all(self) -> list[StoredCA]:
        found = []
        for slot in SLOTS:
            for kind in KINDS:
                if (ca := self.read(kind, slot)) is not None:
                    found.append(ca)
        return found

    def write(self, ca: StoredCA) -> None:
        key, pub, crt = self.paths(ca.kind, ca.slot)
        key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(key.parent, 0o700)
        try:
            write_file_atomic(crt, ca.x509_pem, 0o644)
            write_file_atomic(pub, (ca.ssh_public.strip() + "\n").encode(), 0o644)
            write_file_atomic(key, ca.private_key, 0o600)  # last: exists() means complete
        except OSError as exc:
            raise StorageError(f"cannot write the {ca.kind} CA to {key.parent}: {exc}") from None

    def write_key(self, ca: StoredCA) -> None:
        key, _pub, _crt = self.paths(ca.kind, ca.slot)
        if not key.exists():
            raise StorageError(f"no {ca.kind} CA key at {key} to rewrite")
        write_file_atomic(key, ca.private_key, 0o600)

    def remove(self, kind: CAKindName, slot: CASlot) -> None:
        key, pub, crt = self.paths(kind, slot)
        for path in (key, pub, crt):  # the key first: a half-removed CA is no CA
            path.unlink(missing_ok=True)


class FileAuthorities:
    """:class:`hub.storage.api.Authorities` over :class:`CAFiles`, locked by hub.db."""

    def __init__(self, files: CAFiles, hub_db: TxDb) -> None:
        self.files = files
        self._db = hub_db

    async def all(self) -> list[StoredCA]:
        return self.files.all()

    async def create(self, cas: Sequence[StoredCA]) -> bool:
        async with self._db.tx():  # hub.db's write lock: one creator across processes
            if any(self.files.read(kind, "current") for kind in KINDS):
                return False
            self.files.ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            for ca in cas:
                self.files.write(ca)
        return True

    async def replace_keys(self, cas: Sequence[StoredCA]) -> None:
        async with self._db.tx():
            for ca in cas:
                self.files.write_key(ca)
