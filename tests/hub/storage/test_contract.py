"""The storage contract: the same cases against every engine (``storage`` fixture).

Each case uses only :mod:`hub.storage.api`; an engine passes when it behaves
exactly as the interface's docstrings say, atomic operations included.
"""

from __future__ import annotations

from hub.storage.api import Storage

# == users, roles, tokens, invites, login guards, nodes, presence, locks, change feed ==


# == audit, authorities, rotation, settings, firmware, trusted keys, blobs ==============


async def test_engine_name(storage: Storage) -> None:
    assert storage.engine in ("sqlite", "postgresql")
