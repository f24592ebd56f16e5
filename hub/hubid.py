"""This hub's id: what its presence leases carry (docs/storage.md "Presence").

Stable per data dir: generated at the first start into ``DATA/hub-id`` (or given
with ``hub start --hub-id``, which wins and is not written), so a restart drops
exactly the leases this hub held before and never another hub's.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from remoteler.errors import ConfigError

HUB_ID_FILE = "hub-id"
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def check_hub_id(value: str) -> str:
    if not _VALID.fullmatch(value):
        raise ConfigError(
            f"hub id {value[:70]!r} is not valid: use 1-63 letters, digits, '.', '_' or '-'"
        )
    return value


def load_hub_id(data_dir: Path, given: str | None = None) -> str:
    """``given`` if set, else the id in ``data_dir``, made on first use."""
    if given:
        return check_hub_id(given)
    path = data_dir / HUB_ID_FILE
    try:
        return check_hub_id(path.read_text().strip())
    except FileNotFoundError:
        pass
    value = "hub-" + secrets.token_hex(6)
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{HUB_ID_FILE}.tmp")
    tmp.write_text(value + "\n")
    os.replace(tmp, path)
    return value
