"""A device's identity for tests that run its SSH server on ``--local-listen`` alone."""

from __future__ import annotations

from edge_agent.identity import NodeIdentity
from remoteler.ca import CertAuthority, generate_private_key


def local_identity(node_id: str) -> tuple[NodeIdentity, CertAuthority]:
    """A node identity under fresh host and user CAs, no hub; returns it and the user CA."""
    host_ca = CertAuthority.generate("host", "test")
    user_ca = CertAuthority.generate("user", "test")
    key = generate_private_key()
    ident = NodeIdentity(
        key=key,
        node_id=node_id,
        name="truck-042",
        hub="127.0.0.1:9",
        ssh_cert=host_ca.sign_ssh_host_cert(key.public_key(), key_id=node_id, principals=["x"]),
        tls_cert=b"",
        host_ca_pem=host_ca.x509_pem,
        user_ca_ssh=user_ca.ssh_public_line(),
        cluster="test",
    )
    return ident, user_ca
