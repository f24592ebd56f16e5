"""The access check of an OpenSSH user certificate, shared by the device and the hub.

The embedded server (:func:`edge_agent.authz.decide_user_cert`) and the hub's
recording proxy (:func:`hub.recording.auth.check_user_cert`) decide the same way:
asyncssh has already checked the CA signature, validity window and principal;
this re-checks them with our parser (defence in depth) and applies the access
rules the hub signed into the certificate against the node's labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from remoteler.access import RULES_EXTENSION, AccessDecision, decide, decode_rules
from remoteler.ca import CAError, parse_certificate
from remoteler.ca.sshcert import ParsedCert

#: Critical options asyncssh enforces itself (PROTOCOL.certkeys); any other one
#: means the certificate asks for a restriction we cannot honour, so refuse it.
KNOWN_CRITICAL_OPTIONS = frozenset({"force-command", "source-address"})


@dataclass(frozen=True)
class Checked:
    """The outcome of :func:`check_user_cert`."""

    decision: AccessDecision
    """``reason`` is None when the login is allowed."""
    cert: ParsedCert | None = None
    """The certificate, when it could be read."""


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


#: The refusal of a certificate outside its validity window (at the time given).
CERT_TIME_REFUSED = "certificate expired or not yet valid"


def check_user_cert(
    cert: bytes | str,
    login: str,
    *,
    trusted: Sequence[Ed25519PublicKey],
    labels: Mapping[str, str],
    node_name: str,
    now: float,
    key_id: str | None = None,
) -> Checked:
    """Whether ``cert`` may log in as ``login`` on the node, and what the session may do.

    ``trusted``: every user CA (two during a rotation); ``key_id``: if given, the
    certificate must be that user's (the hub knows who opened the websocket).
    """
    try:
        parsed = parse_certificate(cert)
    except CAError as exc:
        return Checked(AccessDecision(f"unreadable certificate: {exc}"))
    if not parsed.signature_valid or _raw(parsed.ca_public) not in {_raw(k) for k in trusted}:
        return Checked(AccessDecision("certificate not signed by the user CA"), parsed)
    if parsed.cert_type != "user":
        return Checked(AccessDecision("not a user certificate"), parsed)
    if key_id is not None and parsed.key_id != key_id:
        return Checked(
            AccessDecision(f"the SSH certificate is {parsed.key_id[:64]!r}'s, not {key_id!r}'s"),
            parsed,
        )
    if not parsed.valid_after <= now < parsed.valid_before:
        return Checked(AccessDecision(CERT_TIME_REFUSED), parsed)
    unknown = sorted(set(parsed.critical_options) - KNOWN_CRITICAL_OPTIONS)
    if unknown:
        return Checked(
            AccessDecision(f"certificate has unknown critical option {unknown[0]!r}"), parsed
        )
    if login not in parsed.principals:
        return Checked(
            AccessDecision(f"login {login!r} is not among the certificate's principals"), parsed
        )
    encoded = parsed.extensions.get(RULES_EXTENSION)
    if not encoded:
        return Checked(AccessDecision("certificate carries no access rules"), parsed)
    try:
        rules = decode_rules(encoded)
    except ValueError:
        return Checked(AccessDecision("certificate access rules are malformed"), parsed)
    return Checked(decide(rules, login, labels, node=node_name, user=parsed.key_id), parsed)
