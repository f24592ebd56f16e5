"""The hub's own dependencies, kept out of an agent install (the ``[hub]`` extra)."""

from __future__ import annotations

import importlib.util

from remoteler.errors import UsageError

#: Modules only the hub imports (password hashing, one-time codes).
HUB_MODULES = ("argon2", "pyotp", "aiohttp", "prometheus_client")


def require_hub_extra() -> None:
    """Raise one line naming the install command when the ``[hub]`` extra is missing."""
    missing = [name for name in HUB_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(
            f"missing {', '.join(missing)}: the hub needs "
            "\"pip install 'remoteler[hub]'\" (an agent-only install leaves them out)"
        )
