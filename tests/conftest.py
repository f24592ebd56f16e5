from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import Cluster, free_port
from pgkit import PgServer


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, free_port())
    c.start_hub()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the session (per xdist worker), started on first use."""
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


#: The longest-running modules, started first: with ``-n 4 --dist loadfile`` each
#: module runs whole on one worker, so a long one picked up last makes the others
#: idle at the end (see the Makefile's pytest line).
SLOW_FIRST = (
    "e2e/test_hub_cluster.py",
    "e2e/test_end_to_end.py",
    "e2e/test_ca_rotation.py",
    "bench/test_smoke.py",
    "bench/test_smoke_hub.py",
    "bench/test_smoke_device.py",
    "e2e/test_locks.py",
    "e2e/test_login_protection.py",
    "e2e/test_recording_proxy.py",
    "e2e/test_secrets_at_rest.py",
)
#: Then the other real-process directories; unit tests fill the gaps last.
HEAVY_DIRS = ("e2e", "tsh", "bench")


def _module_rank(item: pytest.Item) -> tuple[int, int]:
    rel = Path(str(item.fspath)).relative_to(Path(__file__).parent).as_posix()
    if rel in SLOW_FIRST:
        return (0, SLOW_FIRST.index(rel))
    return (1, 0) if rel.split("/", 1)[0] in HEAVY_DIRS else (2, 0)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_module_rank)  # stable: a module's tests stay together, in order
