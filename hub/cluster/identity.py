"""A hub's own identity among its peers: an x509 certificate from the host CA whose
common name is the hub id and whose organisation is :data:`HUB_ORG`.

It is both the server certificate of the peer listener and the client certificate a
hub presents when it dials a peer, so a peer link is mutual TLS between two hubs of
the cluster and each end knows the other's hub id. A node's certificate (also from
the host CA, organisation ``remoteler-node``) never opens a peer link.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.datadir import is_ip
from hub.net.identity import HUB_ORG
from remoteler.ca import CertAuthority
from remoteler.tlsutil import HUB_GROUPS, load_chain, set_groups

#: A hub certificate's lifetime; it is issued again at start, at every CA rotation step
#: and once half of it has passed (:meth:`PeerIdentity.due`).
HUB_CERT_TTL = 24 * 3600


@dataclass(frozen=True)
class PeerIdentity:
    """This hub's certificate and key and the host CAs it trusts for peers."""

    hub_id: str
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    trusted_pems: tuple[bytes, ...]
    issued_at: float

    @classmethod
    def issue(
        cls, hub_id: str, server_ca: CertAuthority, trusted: list[bytes], hosts: list[str]
    ) -> PeerIdentity:
        """A fresh certificate for ``hub_id`` from the host CA that serves now."""
        key = Ed25519PrivateKey.generate()
        names = {"localhost", *hosts}
        cert = server_ca.issue_x509(
            key.public_key(),
            common_name=hub_id,
            organization=HUB_ORG,
            usage="both",
            dns_names=sorted(n for n in names if n and not is_ip(n)),
            ip_addresses=sorted({"127.0.0.1", "::1", *(n for n in names if is_ip(n))}),
            ttl_seconds=HUB_CERT_TTL,
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(hub_id, cert, key_pem, tuple(trusted), time.time())

    def due(self, now: float) -> bool:
        """True once half the certificate's life has passed: issue a new one."""
        return now - self.issued_at >= HUB_CERT_TTL / 2

    def server_context(self) -> ssl.SSLContext:
        """The peer listener's context: TLS 1.3, a client certificate required."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        load_chain(ctx, self.cert_pem, self.key_pem)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.num_tickets = 0
        ctx.load_verify_locations(cadata=b"".join(self.trusted_pems).decode())
        set_groups(ctx, HUB_GROUPS)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """The context a hub dials a peer with: its certificate, the host CAs.

        Host names are not checked (hubs are often reached by bare IPs); the peer's
        hub id in its certificate is (:func:`peer_hub_id`).
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        load_chain(ctx, self.cert_pem, self.key_pem)
        ctx.load_verify_locations(cadata=b"".join(self.trusted_pems).decode())
        return ctx


def peer_hub_id(der: bytes | None) -> str | None:
    """The hub id of a verified peer certificate, or None if it is not a hub's."""
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        orgs = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    except ValueError:
        return None
    if not orgs or not cns or orgs[0].value != HUB_ORG:
        return None
    value = cns[0].value
    return value if isinstance(value, str) else None
