"""Certificates at the hub's recording proxy: the user's, checked as the device would,
and the short-lived one the hub signs to log in to the device for that user.

The check is the device's (:func:`remoteler.usercert.check_user_cert`, shared with
``edge_agent.authz.decide_user_cert``) against every user CA in use, plus one the
device cannot make: the SSH certificate must belong to the user whose x509
certificate opened the websocket.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hub.recording.session import UpstreamError
from remoteler import usercert
from remoteler.ca import CertAuthority
from remoteler.ca.sshcert import ParsedCert
from remoteler.roleopts import DISCONNECT_EXTENSION
from remoteler.usercert import Checked

__all__ = ["UPSTREAM_TTL", "Checked", "check_user_cert", "upstream_cert"]

#: Lifetime of the certificate the hub presents to the device: it is used once, at
#: once (sshd and the agent check a certificate at login only).
UPSTREAM_TTL = 120


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
    return usercert.check_user_cert(
        blob, login, trusted=trusted, labels=labels, node_name=node_name, now=now, key_id=user
    )


def upstream_cert(
    user_ca: CertAuthority, user_cert: ParsedCert, login: str, key: Ed25519PrivateKey, now: int
) -> str:
    """A certificate for ``key`` to log in to the device as ``login`` for the same user.

    Same key id, extensions (permit-*, the signed access rules and roles: the device
    still enforces them) and critical options, bar ``source-address``: the hub
    enforced it against the user's address, and the device sees the hub's; and bar
    the disconnect-at-expiry flag, which the hub enforces at the user's own expiry.
    Valid for :data:`UPSTREAM_TTL` seconds, never past the user's own certificate;
    :class:`~hub.recording.session.UpstreamError` if that one has expired since it
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
        # the hub ends the user's sessions at the user's expiry; this one is shorter
        extensions={k: v for k, v in user_cert.extensions.items() if k != DISCONNECT_EXTENSION},
        critical_options={
            k: v for k, v in user_cert.critical_options.items() if k != "source-address"
        },
    )
