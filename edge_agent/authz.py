"""The device's own access decision for a user certificate, made without the hub.

asyncssh already checks the CA signature, validity window and principal; this
re-checks them with our parser (defence in depth) and applies the access rules
the hub signed into the certificate against this node's labels.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from remoteler.access import RULES_EXTENSION, check_access, decode_rules
from remoteler.ca import CAError, parse_certificate

#: Critical options asyncssh enforces itself (PROTOCOL.certkeys); any other one
#: means the certificate asks for a restriction we cannot honour, so refuse it.
KNOWN_CRITICAL_OPTIONS = frozenset({"force-command", "source-address"})


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def authorize_user_cert(
    cert: bytes | str,
    login: str,
    user_ca: Ed25519PublicKey,
    labels: Mapping[str, str],
    node_name: str,
    now: float,
) -> str | None:
    """None if ``cert`` may log in as ``login`` here; otherwise the reason, for the log."""
    try:
        parsed = parse_certificate(cert)
    except CAError as exc:
        return f"unreadable certificate: {exc}"
    if not parsed.signature_valid or _raw(parsed.ca_public) != _raw(user_ca):
        return "certificate not signed by the user CA"
    if parsed.cert_type != "user":
        return "not a user certificate"
    if not parsed.valid_after <= now < parsed.valid_before:
        return "certificate expired or not yet valid"
    unknown = sorted(set(parsed.critical_options) - KNOWN_CRITICAL_OPTIONS)
    if unknown:
        return f"certificate has unknown critical option {unknown[0]!r}"
    if login not in parsed.principals:
        return f"login {login!r} is not among the certificate's principals"
    encoded = parsed.extensions.get(RULES_EXTENSION)
    if not encoded:
        return "certificate carries no access rules"
    try:
        rules = decode_rules(encoded)
    except ValueError:
        return "certificate access rules are malformed"
    return check_access(rules, login, labels, node=node_name, user=parsed.key_id)
