"""The device's own access decision for a user certificate, made without the hub.

asyncssh already checks the CA signature, validity window and principal; this
re-checks them with our parser (defence in depth) and applies the access rules
the hub signed into the certificate (allow, deny, permissions) against this
node's labels.

The SSH server keeps the decision's :class:`~remoteler.access.Permissions` on
the connection; code that serves port forwarding, file transfer, the serial
console or firmware push asks :func:`connection_permissions` before it acts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from remoteler.access import NO_PERMISSIONS, AccessDecision, Permissions
from remoteler.usercert import check_user_cert

#: Key of the connection's extra info (asyncssh ``get_extra_info``) with its Permissions.
PERMISSIONS_INFO = "remoteler_permissions"


def decide_user_cert(
    cert: bytes | str,
    login: str,
    user_ca: Ed25519PublicKey,
    labels: Mapping[str, str],
    node_name: str,
    now: float,
) -> AccessDecision:
    """Whether ``cert`` may log in as ``login`` here, and what the session may do
    (:func:`remoteler.usercert.check_user_cert`, with this node's one user CA)."""
    return check_user_cert(
        cert, login, trusted=[user_ca], labels=labels, node_name=node_name, now=now
    ).decision


def connection_permissions(conn: Any) -> Permissions:
    """The permissions of an authenticated SSH connection (none if it has no decision).

    ``conn`` is the asyncssh connection (``chan.get_connection()`` from a session,
    or the ``conn`` an ``SSHServer`` was given). Check before serving, e.g.
    ``if not connection_permissions(conn).port_forwarding: return False``.
    """
    found = conn.get_extra_info(PERMISSIONS_INFO) if conn is not None else None
    return found if isinstance(found, Permissions) else NO_PERMISSIONS
