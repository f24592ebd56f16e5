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


@dataclass(frozen=True)
class Identity:
    kind: Literal["user", "node"]
    #: user name, or node id
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
            return Identity("node", cn)
        return None
    if signed_by(cert, user_ca.public_key):
        return Identity("user", cn)
    if signed_by(cert, host_ca.public_key):
        return Identity("node", cn)
    return None


@functools.lru_cache(maxsize=16)
def _subject(pem: bytes) -> x509.Name:
    return x509.load_pem_x509_certificate(pem).subject
