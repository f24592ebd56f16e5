"""The shared SSH server policy: certificates from the trusted user CAs only."""

from __future__ import annotations

import asyncssh

from remoteler.sshserver import CertificateOnlyServer


class _Server(CertificateOnlyServer):
    def __init__(self, cas: list[asyncssh.SSHKey]) -> None:
        self.user_cas = cas


def test_only_certificates_from_a_trusted_ca() -> None:
    old, new, other = (asyncssh.generate_private_key("ssh-ed25519") for _ in range(3))
    server = _Server([old.convert_to_public(), new.convert_to_public()])  # mid-rotation
    assert server.validate_ca_key("pi", old.convert_to_public())
    assert server.validate_ca_key("pi", new.convert_to_public())
    assert not server.validate_ca_key("pi", other.convert_to_public())
    assert not server.validate_public_key("pi", old.convert_to_public())  # plain keys never
    assert not server.password_auth_supported()
    assert not server.kbdint_auth_supported()
    assert server.public_key_auth_supported()
