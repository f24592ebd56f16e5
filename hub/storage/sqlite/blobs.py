"""Firmware bundles as files: ``DATA/firmware/bundles/<sha256>.bundle`` (as before hub/storage).

A blob is written to a temporary file in the same directory, hashed while it
streams in, fsynced and renamed to its name only when the hash matches and the
size is within the cap (then the directory is fsynced): a reader never sees a
partial or wrong bundle, and a crash leaves at most a ``.incoming-*`` file, removed
at the next open.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

from hub.storage.api import Conflict, NotFound, StorageError

BUNDLES = Path("firmware") / "bundles"
SUFFIX = ".bundle"
_NAME = re.compile(r"[0-9a-f]{64}")
_INCOMING = ".incoming-"


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise NotFound(f"no blob {name[:80]!r}: a blob's name is its sha256 (64 hex digits)")
    return name


class FileBlobs:
    """:class:`hub.storage.api.Blobs` as files in ``DATA/firmware/bundles``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def open(cls, data_dir: Path) -> FileBlobs:
        root = data_dir / BUNDLES
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in root.glob(_INCOMING + "*"):  # a put that a crash interrupted
            stale.unlink(missing_ok=True)
        return cls(root)

    def path(self, name: str) -> Path:
        return self.root / (_check_name(name) + SUFFIX)

    async def put(self, name: str, chunks: AsyncIterator[bytes], max_size: int) -> int:
        final = self.path(name)
        tmp = self.root / f"{_INCOMING}{os.getpid()}-{os.urandom(4).hex()}"
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_size:
                        raise Conflict(f"blob {name[:12]} is larger than {max_size} bytes")
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                if digest.hexdigest() != name:
                    raise Conflict(
                        f"blob {name[:12]}: the bytes hash to {digest.hexdigest()[:12]}, "
                        "not to its name"
                    )
                await asyncio.to_thread(os.fsync, fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            _fsync_dir(self.root)
        except OSError as exc:
            raise StorageError(
                f"cannot store blob {name[:12]} in {self.root}: {exc.strerror}"
            ) from None
        finally:
            tmp.unlink(missing_ok=True)
        return size

    async def size(self, name: str) -> int | None:
        try:
            return self.path(name).stat().st_size
        except (FileNotFoundError, NotFound):
            return None

    async def read(self, name: str, offset: int, length: int) -> bytes:
        path = self.path(name)
        try:
            return await asyncio.to_thread(_read_at, path, offset, length)
        except FileNotFoundError:
            raise NotFound(f"no blob {name[:12]} in {self.root}") from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from None

    async def delete(self, name: str) -> bool:
        try:
            self.path(name).unlink()
        except (FileNotFoundError, NotFound):
            return False
        return True

    async def names(self) -> list[str]:
        return sorted(
            p.name.removesuffix(SUFFIX)
            for p in self.root.glob("*" + SUFFIX)
            if _NAME.fullmatch(p.name.removesuffix(SUFFIX))
        )


def _read_at(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(max(0, offset))
        return f.read(max(0, length))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
