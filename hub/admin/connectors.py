"""``admin.connectors.*`` and ``admin.auth_preference.set``: SSO connectors as
resources (``tctl create -f``, ``tctl get connectors``, ``tctl rm connector/NAME``)
and the cluster's default connector (docs/sso.md)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hub.admin.rpc import AdminCall, AdminHandler, text
from hub.sso.connectors import (
    DEFAULT_CONNECTOR_KEY,
    LOCAL,
    from_stored,
    parse_connector,
    to_stored,
)
from remoteler.admin import AdminMethod
from remoteler.audit.events import EventType
from remoteler.errors import RemotelerError, UsageError

NO_WEB = "single sign-on needs the hub's web console: start the hub without --no-web"


def _sso(call: AdminCall) -> Any:
    sso = getattr(call.host, "sso", None)
    if sso is None:
        raise UsageError(NO_WEB)
    return sso


async def connectors_put(call: AdminCall, params: dict[str, Any]) -> Any:
    doc = params.get("doc")
    if not isinstance(doc, dict):
        raise UsageError("send the connector document (tctl create -f connector.toml)")
    sso = _sso(call)
    connector = parse_connector(doc)
    storage = call.host.storage
    existed = await storage.connectors.get(connector.name) is not None
    await storage.connectors.put(to_stored(connector, sso.seal_secret, time.time()))
    await call.record(
        EventType.CONNECTOR_CREATED,
        name=connector.name,
        kind=connector.kind,
        updated=existed,
    )
    return {
        "connector": connector.name,
        "kind": connector.kind,
        "updated": existed,
        "callback_url": sso.callback_url(connector.kind),
    }


async def connectors_ls(call: AdminCall, params: dict[str, Any]) -> Any:
    sso = getattr(call.host, "sso", None)
    unseal = sso.unseal_secret if sso is not None else None
    out: list[dict[str, Any]] = []
    for row in await call.host.storage.connectors.all():
        try:  # may derive the passphrase's key (scrypt): in a thread
            connector = await asyncio.to_thread(from_stored, row, unseal)
        except RemotelerError as exc:  # e.g. a secret that does not decrypt here
            out.append({"kind": row.kind, "name": row.name, "error": exc.message})
            continue
        out.append(connector.public())
    default = await call.host.storage.settings.get(DEFAULT_CONNECTOR_KEY)
    return {"connectors": out, "default": default or LOCAL}


async def connectors_rm(call: AdminCall, params: dict[str, Any]) -> Any:
    name = text(params, "name")
    storage = call.host.storage
    if not await storage.connectors.delete(name):
        raise UsageError(f"no connector {name!r}; see 'tctl get connectors'")
    if await storage.settings.get(DEFAULT_CONNECTOR_KEY) == name:
        await storage.settings.put(DEFAULT_CONNECTOR_KEY, LOCAL)
        sso = getattr(call.host, "sso", None)
        if sso is not None:
            sso.forget_default()
    await call.record(EventType.CONNECTOR_DELETED, name=name)
    return {"connector": name}


async def auth_preference_set(call: AdminCall, params: dict[str, Any]) -> Any:
    """``kind = "auth_preference"``, ``connector_name = "corp"`` (or ``"local"``)."""
    name = text(params, "connector_name", LOCAL)
    if name != LOCAL and await call.host.storage.connectors.get(name) is None:
        raise UsageError(f'no connector {name!r}: create it first, or use "local"')
    await call.host.storage.settings.put(DEFAULT_CONNECTOR_KEY, name)
    sso = getattr(call.host, "sso", None)
    if sso is not None:
        sso.forget_default()
    await call.changed("auth_preference.set", name)
    return {"connector_name": name}


METHODS: dict[AdminMethod, AdminHandler] = {
    AdminMethod.CONNECTORS_PUT: connectors_put,
    AdminMethod.CONNECTORS_LS: connectors_ls,
    AdminMethod.CONNECTORS_RM: connectors_rm,
    AdminMethod.AUTH_PREFERENCE_SET: auth_preference_set,
}
