"""``storage``: a fresh, empty :class:`hub.storage.api.Storage` on each engine.

The PostgreSQL one is a new database on the one server the test session
starts (``pg_server`` in tests/conftest.py, tests/pgkit.py): run only the
SQLite cases with ``-k sqlite``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hub.storage.api import Storage

ENGINES = ["sqlite", "postgresql"]


async def open_engine(engine: str, tmp_path: Path, request: Any) -> Storage:
    if engine == "sqlite":
        from hub.storage.sqlite import open_sqlite

        return await open_sqlite(tmp_path / "data")
    from hub.storage.postgres import open_postgres

    server = request.getfixturevalue("pg_server")
    return await open_postgres(server.new_database())


@pytest.fixture(params=ENGINES)
async def storage(request: Any, tmp_path: Path) -> AsyncIterator[Storage]:
    opened = await open_engine(request.param, tmp_path, request)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(params=ENGINES)
async def storage_pair(request: Any, tmp_path: Path) -> AsyncIterator[tuple[Storage, Storage]]:
    """Two Storage objects on one database: what two hubs sharing it hold."""
    if request.param == "sqlite":
        from hub.storage.sqlite import open_sqlite

        first = await open_sqlite(tmp_path / "data")
        second = await open_sqlite(tmp_path / "data")
    else:
        from hub.storage.postgres import open_postgres

        url = request.getfixturevalue("pg_server").new_database()
        first = await open_postgres(url)
        second = await open_postgres(url)
    try:
        yield first, second
    finally:
        await second.close()
        await first.close()
