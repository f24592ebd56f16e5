"""Who is on the other end of a TLS connection: a user, a node, or nobody.

TLS has already verified the chain against the two CA roots; this decides
which CA signed the leaf, so a node certificate never opens the user endpoint
and a user certificate never opens the tunnel endpoint.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509

from remoteler.ca import CertAuthority, signed_by

#: the organisation of a hub's certificate (hub/cluster/identity.py)
HUB_ORG = "remoteler-hub"


@dataclass(frozen=True)
class Identity:
    kind: Literal["user", "node", "hub"]
    #: user name, node id, or hub id (a peer hub's certificate, hub/cluster/identity.py)
    name: str


def peer_identity(
    transport: Any, user_ca: CertAuthority, host_ca: CertAuthority
) -> Identity | None:
    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    except (ValueError, IndexError):
        return None
    if not isinstance(cn, str):
        return None
    # TLS already verified the chain against exactly these two roots, whose
    # subjects differ, so the issuer name says which one signed. Only if the
    # names cannot tell them apart is the signature checked (it costs ~8% of a
    # reconnect storm's hub CPU).
    user_subject, host_subject = _subject(user_ca.x509_pem), _subject(host_ca.x509_pem)
    if user_subject != host_subject:
        if cert.issuer == user_subject:
            return Identity("user", cn)
        if cert.issuer == host_subject:
            return Identity(_host_kind(cert), cn)
        return None
    if signed_by(cert, user_ca.public_key):
        return Identity("user", cn)
    if signed_by(cert, host_ca.public_key):
        return Identity(_host_kind(cert), cn)
    return None


def _host_kind(cert: x509.Certificate) -> Literal["node", "hub"]:
    """A host CA certificate is a hub's if its organisation says so, else a node's."""
    orgs = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
    return "hub" if orgs and orgs[0].value == HUB_ORG else "node"


@functools.lru_cache(maxsize=16)
def _subject(pem: bytes) -> x509.Name:
    return x509.load_pem_x509_certificate(pem).subject


def peer_key_id(transport: Any) -> str:
    """SHA-256 of the peer certificate's public key (hex), or "" without one.

    A resumable session is bound to it (docs/resume.md): a user who logs in again
    with a new key is a new client, not the session's.
    """
    import hashlib

    from cryptography.hazmat.primitives import serialization

    ssl_object = transport.get_extra_info("ssl_object") if transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    if not der:
        return ""
    try:
        key = x509.load_der_x509_certificate(der).public_key()
    except ValueError:
        return ""
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()
