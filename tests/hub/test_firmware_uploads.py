"""Bundle uploads (hub/admin/firmware.py) straight into the storage's blobs, without a hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hub.admin.firmware import UPLOAD_IDLE, Uploads, _feed, _stored
from hub.storage.api import Storage, blob_name
from hub.storage.sqlite import open_sqlite
from remoteler.errors import UsageError


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    opened = await open_sqlite(tmp_path / "data")
    try:
        yield opened
    finally:
        await opened.close()


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_chunks_become_the_blob_named_by_the_sha256(storage: Storage) -> None:
    data = bytes(range(256)) * 1000
    uploads = Uploads(Clock())
    up = uploads.begin(storage.blobs, blob_name(data), len(data))
    for at in range(0, len(data), 7000):
        await _feed(up, data[at : at + 7000])
    await _feed(up, None)
    assert await _stored(up) == len(data)
    assert await storage.blobs.read(blob_name(data), 0, len(data)) == data


async def test_bytes_that_are_not_the_sha256_are_not_kept(storage: Storage) -> None:
    uploads = Uploads(Clock())
    up = uploads.begin(storage.blobs, blob_name(b"announced"), 5)
    await _feed(up, b"other")
    await _feed(up, None)
    with pytest.raises(UsageError, match="do not match the bundle's sha256"):
        await _stored(up)
    assert await storage.blobs.names() == []


async def test_an_idle_upload_is_dropped_and_nothing_kept(storage: Storage) -> None:
    clock = Clock()
    uploads = Uploads(clock)
    up = uploads.begin(storage.blobs, blob_name(b"0123456789"), 10)
    await _feed(up, b"01234")
    clock.now += UPLOAD_IDLE + 1
    with pytest.raises(UsageError, match="expired or is unknown"):
        uploads.get(up.id)
    await asyncio.gather(up.task, return_exceptions=True)
    assert up.task.cancelled()
    assert await storage.blobs.names() == []


async def test_begin_refuses_a_missing_sha256_and_bad_sizes(storage: Storage) -> None:
    uploads = Uploads(Clock())
    with pytest.raises(UsageError, match="sha256"):
        uploads.begin(storage.blobs, None, 10)
    with pytest.raises(UsageError, match="1 byte to"):
        uploads.begin(storage.blobs, blob_name(b""), 0)
    assert uploads.open == {}
