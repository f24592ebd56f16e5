"""The ``admin.*`` method table for the hub's RPC: each handler module's methods, each
call wrapped in :func:`hub.admin.rpc.authorize` (docs/tctl.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hub.admin import audit, auth, cluster, connectors, firmware, users
from hub.admin.rpc import AdminCall, AdminHandler, AdminHost, RpcHandler, authorize, whoami
from hub.net.identity import Identity
from remoteler.admin import AdminMethod


def admin_methods(host: AdminHost, peer: Callable[[], str]) -> dict[str, RpcHandler]:
    """Every ``admin.*`` method, each wrapped in :func:`authorize`; ``peer`` gives the
    calling connection's source address."""
    table: dict[AdminMethod, AdminHandler] = {
        AdminMethod.WHOAMI: whoami,
        **users.METHODS,
        **connectors.METHODS,
        **auth.METHODS,
        **audit.METHODS,
        **cluster.METHODS,
        **firmware.methods(),
    }

    def wrap(handler: AdminHandler) -> RpcHandler:
        async def call(ident: Identity | None, params: dict[str, Any]) -> Any:
            os_user = params.get("os_user", "")
            caller = await authorize(
                host, ident, peer(), os_user if isinstance(os_user, str) else ""
            )
            return await handler(AdminCall(host, caller), params)

        return call

    missing = set(AdminMethod) - set(table)
    assert not missing, f"admin methods without a handler: {missing}"
    return {str(name): wrap(handler) for name, handler in table.items()}
