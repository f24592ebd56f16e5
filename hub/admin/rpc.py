"""The ``admin.*`` RPC methods that ``tctl`` calls: who may call them, and the audit.

Every call is checked against the caller's roles (the ``admin`` permission,
preset role ``editor``; the hub's built-in admin identity has it) and every
change is written to the audit trail with the caller's name and address
(``by = "tctl:NAME"``, ``addr``). The handlers themselves live by area in
``hub/admin/*.py``; :func:`hub.admin.methods.admin_methods` gathers them for the server's
method table. See docs/tctl.md.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from hub.auth.service import AuthService
from hub.datadir import DataDir
from hub.net.identity import Identity
from hub.rotation.store import CASet, RotationStore
from hub.storage.api import AuditLog, Storage
from remoteler.access import grants_admin
from remoteler.admin import ADMIN_PERMISSION, BUILTIN_ADMIN, HUB_ADDR_FILE
from remoteler.audit.events import HUB_NODE, EventType, make_event
from remoteler.errors import AccessDenied, AuthError, ConfigError, UsageError
from remoteler.locks import find_lock

#: A ``os_user`` the client says it runs as (recorded as said, never trusted) is cut here.
MAX_OS_USER = 64


class AdminHost(Protocol):
    """What the admin methods use of the running hub (hub/api/server.py HubServer)."""

    auth: AuthService
    storage: Storage
    audit: AuditLog | None
    rotation: Any
    locks: Any
    #: this hub's id in the cluster (docs/cluster.md)
    hub_id: str


@dataclass(frozen=True)
class Caller:
    #: user name, or BUILTIN_ADMIN for the hub's own admin identity
    name: str
    #: source address of the RPC connection
    addr: str
    #: the OS user tctl says it runs as (recorded, not trusted); "" if not said
    os_user: str


@dataclass(frozen=True)
class AdminCall:
    """One authorised admin call: the hub's parts, the caller, and its audit helper."""

    host: AdminHost
    caller: Caller

    @property
    def data(self) -> DataDir:
        if self.host.rotation is None:
            raise ConfigError("this hub runs without a data dir; tctl needs 'hub start'")
        data: DataDir = self.host.rotation.data
        return data

    @property
    def rotation_store(self) -> RotationStore:
        """The CA rotation state in storage (the hub's own :class:`RotationStore`)."""
        if self.host.rotation is None:
            raise ConfigError("this hub runs without CA rotation; tctl needs 'hub start'")
        store: RotationStore = self.host.rotation.store
        return store

    async def data_cas(self) -> CASet:
        """The CAs of the current rotation phase, as storage has them now."""
        return await self.rotation_store.load()

    def hub_addr(self) -> str:
        path = self.data.path / HUB_ADDR_FILE
        return path.read_text().strip() if path.exists() else "not running"

    def who(self) -> dict[str, str]:
        """Audit fields naming the caller."""
        out = {"by": f"tctl:{self.caller.name}", "addr": self.caller.addr}
        if self.caller.os_user:
            out["os_user"] = self.caller.os_user
        return out

    async def record(
        self, type: EventType | str, *, user: str = "", login: str = "", **fields: Any
    ) -> None:
        """Durable before the caller hears of the change (a store error fails the call)."""
        if self.host.audit is not None:
            now = fields.pop("now", None)
            event = make_event(
                type, node=HUB_NODE, user=user, login=login, now=now, **fields, **self.who()
            )
            await self.host.audit.record(event)

    async def changed(self, action: str, target: str, **fields: Any) -> None:
        """``admin.change``: a change with no event type of its own (users, tokens...)."""
        await self.record(EventType.ADMIN_CHANGE, action=action, target=target, **fields)


AdminHandler = Callable[[AdminCall, dict[str, Any]], Awaitable[Any]]
RpcHandler = Callable[[Identity | None, dict[str, Any]], Awaitable[Any]]


async def authorize(host: AdminHost, ident: Identity | None, addr: str, os_user: str) -> Caller:
    """The caller, if its identity's roles grant ``admin``; else a one-line refusal."""
    if ident is None or ident.kind != "user":
        raise AuthError(
            "tctl needs an admin identity: on the hub host DATA/admin-identity (the "
            "default), elsewhere -i FILE from 'tctl auth sign --user NAME'"
        )
    os_user = os_user[:MAX_OS_USER]
    if ident.name == BUILTIN_ADMIN:  # a user cert with this name only the hub can issue
        return Caller(ident.name, addr, os_user)
    user = await host.storage.users.get(ident.name)
    if user is None:
        raise AuthError(f"user {ident.name!r} no longer exists; ask an admin")
    lock = find_lock(host.locks.locks, user=user.name, now=time.time())
    if lock is not None:
        raise AccessDenied(lock.refusal())
    if not grants_admin(await host.auth.roles_of(user)):
        raise AccessDenied(
            f"user {user.name!r} lacks the '{ADMIN_PERMISSION}' permission that tctl needs; "
            "ask an admin for a role that has it, e.g. the preset role 'editor'"
        )
    return Caller(user.name, addr, os_user)


async def whoami(call: AdminCall, params: dict[str, Any]) -> Any:
    return {"user": call.caller.name, "addr": call.caller.addr}


# -- parameters -------------------------------------------------------------------


def text(params: dict[str, Any], key: str, default: str | None = None) -> str:
    value = params.get(key, default)
    if not isinstance(value, str):
        raise UsageError(f"missing parameter {key!r}")
    return value


def opt_text(params: dict[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is not None and not isinstance(value, str):
        raise UsageError(f"parameter {key!r} must be a string")
    return value


def opt_int(params: dict[str, Any], key: str) -> int | None:
    value = params.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise UsageError(f"parameter {key!r} must be an integer")
    return value


def data_path(call: AdminCall) -> Path:
    return call.data.path
