"""Names shared by the hub and ``tctl`` for administration over the hub's RPC.

``tctl`` calls the ``admin.*`` methods on ``/v1/rpc`` with a user certificate
whose roles grant :data:`ADMIN_PERMISSION` (the preset role ``editor`` does), or
with the hub's own admin identity (:data:`BUILTIN_ADMIN`, written by the hub to
``DATA/admin-identity``). See docs/tctl.md.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

#: The role permission that lets a user call the ``admin.*`` methods (hub-side only:
#: it is not signed into certificates and devices never see it).
ADMIN_PERMISSION: Final = "admin"
#: Name of the hub's built-in admin identity. ``@`` is refused in user names
#: (hub/auth.py check_name), so no real user can take it; its roles are ``editor``.
BUILTIN_ADMIN: Final = "@admin"
#: The built-in admin's identity in the hub's data dir (tctl's default, 0600).
ADMIN_IDENTITY_FILE: Final = "admin-identity"
#: The address file the running hub writes in its data dir.
HUB_ADDR_FILE: Final = "hub.addr"
#: Most audit events in one ``admin.audit.search`` page (and at most PAGE_BYTES).
AUDIT_PAGE_EVENTS: Final = 500
#: A page stops growing past this many encoded bytes (well under the RPC message cap).
AUDIT_PAGE_BYTES: Final = 256 * 1024
#: Bytes of a firmware bundle per ``admin.firmware.upload`` call (under the 1 MiB cap).
UPLOAD_CHUNK: Final = 512 * 1024


class AdminMethod(StrEnum):
    """The ``admin.*`` RPC methods: one per tctl command (docs/tctl.md)."""

    WHOAMI = "admin.whoami"
    USERS_ADD = "admin.users.add"
    USERS_LS = "admin.users.ls"
    USERS_RM = "admin.users.rm"
    USERS_UNLOCK = "admin.users.unlock"
    TOKENS_ADD = "admin.tokens.add"
    TOKENS_LS = "admin.tokens.ls"
    TOKENS_RM = "admin.tokens.rm"
    NODES_LS = "admin.nodes.ls"
    NODES_RM = "admin.nodes.rm"
    NODES_SET = "admin.nodes.set"
    AUTH_SIGN_USER = "admin.auth.sign_user"
    AUTH_SIGN_HOST = "admin.auth.sign_host"
    AUTH_EXPORT = "admin.auth.export"
    AUTH_ROTATE = "admin.auth.rotate"
    ROLES_PUT = "admin.roles.put"
    ROLES_LS = "admin.roles.ls"
    ROLES_RM = "admin.roles.rm"
    CONNECTORS_PUT = "admin.connectors.put"
    CONNECTORS_LS = "admin.connectors.ls"
    CONNECTORS_RM = "admin.connectors.rm"
    AUTH_PREFERENCE_SET = "admin.auth_preference.set"
    STATUS = "admin.status"
    CLUSTER_SET = "admin.cluster.set"
    AUDIT_SEARCH = "admin.audit.search"
    LOCKS_ADD = "admin.locks.add"
    LOCKS_LS = "admin.locks.ls"
    LOCKS_RM = "admin.locks.rm"
    FIRMWARE_TRUST = "admin.firmware.trust"
    FIRMWARE_TRUST_LS = "admin.firmware.trust_ls"
    FIRMWARE_UNTRUST = "admin.firmware.untrust"
    FIRMWARE_UPLOAD = "admin.firmware.upload"
    FIRMWARE_PUSH = "admin.firmware.push"
    FIRMWARE_STOP = "admin.firmware.stop"
    FIRMWARE_STATUS = "admin.firmware.status"
