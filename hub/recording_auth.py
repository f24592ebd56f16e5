"""Certificates at the hub's recording proxy: the user's, checked as the device would,
and the short-lived one the hub signs to log in to the device for that user.

The check is the device's (``edge_agent.authz.decide_user_cert``) made with the
same shared pieces (:func:`remoteler.ca.parse_certificate`,
:func:`remoteler.access.decide`), plus one the device cannot make: the SSH
certificate must belong to the user whose x509 certificate opened the websocket.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from hub.recording_session import UpstreamError
from remoteler.access import RULES_EXTENSION, AccessDecision, decide, decode_rules
from remoteler.ca import CAError, CertAuthority, parse_certificate
from remoteler.ca.sshcert import ParsedCert

#: Critical options the hub's SSH server (asyncssh) enforces itself.
KNOWN_CRITICAL_OPTIONS = frozenset({"force-command", "source-address"})
#: Lifetime of the certificate the hub presents to the device: it is used once, at
#: once (sshd and the agent check a certificate at login only).
UPSTREAM_TTL = 120


@dataclass(frozen=True)
class Checked:
    """The outcome of :func:`check_user_cert`."""

    decision: AccessDecision
    """``reason`` is None when the login is allowed."""
    cert: ParsedCert | None = None
    """The user's certificate, when it could be read."""


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def check_user_cert(
    blob: bytes,
    login: str,
    *,
    user: str,
    trusted: Sequence[Ed25519PublicKey],
    labels: Mapping[str, str],
    node_name: str,
    now: float,
) -> Checked:
    """Whether ``blob`` (an OpenSSH user certificate) may log in as ``login`` on the
    node, for the websocket's ``user``; ``trusted``: every user CA (two in a rotation)."""
    try:
        parsed = parse_certificate(blob)
    except CAError as exc:
        return Checked(AccessDecision(f"unreadable certificate: {exc}"))
    if not parsed.signature_valid or _raw(parsed.ca_public) not in {_raw(k) for k in trusted}:
        return Checked(AccessDecision("certificate not signed by the user CA"), parsed)
    if parsed.cert_type != "user":
        return Checked(AccessDecision("not a user certificate"), parsed)
    if parsed.key_id != user:
        return Checked(
            AccessDecision(f"the SSH certificate is {parsed.key_id[:64]!r}'s, not {user!r}'s"),
            parsed,
        )
    if not parsed.valid_after <= now < parsed.valid_before:
        return Checked(AccessDecision("certificate expired or not yet valid"), parsed)
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


def upstream_cert(
    user_ca: CertAuthority, user_cert: ParsedCert, login: str, key: Ed25519PrivateKey, now: int
) -> str:
    """A certificate for ``key`` to log in to the device as ``login`` for the same user.

    Same key id, extensions (permit-*, the signed access rules and roles: the device
    still enforces them) and critical options, bar ``source-address``: the hub
    enforced it against the user's address, and the device sees the hub's.
    Valid for :data:`UPSTREAM_TTL` seconds, never past the user's own certificate;
    :class:`~hub.recording_session.UpstreamError` if that one has expired since it
    was checked (the device login can take a while).
    """
    if user_cert.valid_before <= now:
        raise UpstreamError("your certificate has expired; run 'tsh login'")
    ttl = min(UPSTREAM_TTL, user_cert.valid_before - now)
    return user_ca.sign_ssh_user_cert(
        key.public_key(),
        key_id=user_cert.key_id,
        principals=[login],
        ttl_seconds=ttl,
        now=now,
        extensions=dict(user_cert.extensions),
        critical_options={
            k: v for k, v in user_cert.critical_options.items() if k != "source-address"
        },
    )
