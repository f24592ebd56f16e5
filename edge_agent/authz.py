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
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from remoteler.access import (
    NO_PERMISSIONS,
    RULES_EXTENSION,
    AccessDecision,
    Permissions,
    decide,
    decode_rules,
)
from remoteler.ca import CAError, parse_certificate

#: Critical options asyncssh enforces itself (PROTOCOL.certkeys); any other one
#: means the certificate asks for a restriction we cannot honour, so refuse it.
KNOWN_CRITICAL_OPTIONS = frozenset({"force-command", "source-address"})
#: Key of the connection's extra info (asyncssh ``get_extra_info``) with its Permissions.
PERMISSIONS_INFO = "remoteler_permissions"


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def decide_user_cert(
    cert: bytes | str,
    login: str,
    user_ca: Ed25519PublicKey,
    labels: Mapping[str, str],
    node_name: str,
    now: float,
) -> AccessDecision:
    """Whether ``cert`` may log in as ``login`` here, and what the session may do."""
    try:
        parsed = parse_certificate(cert)
    except CAError as exc:
        return AccessDecision(f"unreadable certificate: {exc}")
    if not parsed.signature_valid or _raw(parsed.ca_public) != _raw(user_ca):
        return AccessDecision("certificate not signed by the user CA")
    if parsed.cert_type != "user":
        return AccessDecision("not a user certificate")
    if not parsed.valid_after <= now < parsed.valid_before:
        return AccessDecision("certificate expired or not yet valid")
    unknown = sorted(set(parsed.critical_options) - KNOWN_CRITICAL_OPTIONS)
    if unknown:
        return AccessDecision(f"certificate has unknown critical option {unknown[0]!r}")
    if login not in parsed.principals:
        return AccessDecision(f"login {login!r} is not among the certificate's principals")
    encoded = parsed.extensions.get(RULES_EXTENSION)
    if not encoded:
        return AccessDecision("certificate carries no access rules")
    try:
        rules = decode_rules(encoded)
    except ValueError:
        return AccessDecision("certificate access rules are malformed")
    return decide(rules, login, labels, node=node_name, user=parsed.key_id)


def connection_permissions(conn: Any) -> Permissions:
    """The permissions of an authenticated SSH connection (none if it has no decision).

    ``conn`` is the asyncssh connection (``chan.get_connection()`` from a session,
    or the ``conn`` an ``SSHServer`` was given). Check before serving, e.g.
    ``if not connection_permissions(conn).port_forwarding: return False``.
    """
    found = conn.get_extra_info(PERMISSIONS_INFO) if conn is not None else None
    return found if isinstance(found, Permissions) else NO_PERMISSIONS
