"""edge_agent/identity_check.py: each unusable identity is one ConfigError line naming
the file (identities made by a real CA; the e2e test runs a real agent on each)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.identity import NodeIdentity
from edge_agent.identity_check import check_identity
from remoteler.ca import CertAuthority, generate_private_key
from remoteler.errors import ConfigError

NOW = 1_800_000_000.0


@pytest.fixture
def ident() -> NodeIdentity:
    ca = CertAuthority.generate("host", "example")
    key = generate_private_key()
    cert = ca.issue_x509(
        key.public_key(),
        common_name="n1",
        organization="remoteler-node",
        usage="client",
        ttl_seconds=3600,
        now=int(NOW),
    )
    return NodeIdentity(
        key=key,
        node_id="n1",
        name="n1",
        hub="127.0.0.1:1",
        ssh_cert=ca.sign_ssh_host_cert(key.public_key(), key_id="n1", principals=["n1"]),
        tls_cert=cert,
        host_ca_pem=ca.x509_pem,
        user_ca_ssh=CertAuthority.generate("user", "example").ssh_public_line(),
        cluster="example",
    )


def test_a_sound_identity_passes_even_with_the_clock_at_1970(ident: NodeIdentity) -> None:
    check_identity(ident, Path("/d/identity"), NOW)
    check_identity(ident, Path("/d/identity"), 0.0)  # "not yet valid" is the hub's call


def test_each_fault_names_its_file(ident: NodeIdentity, tmp_path: Path) -> None:
    d = tmp_path / "identity"
    d.mkdir()
    good_cert, good_ca, good_key = ident.tls_cert, ident.host_ca_pem, ident.key
    ident.tls_cert = b"garbage"
    with pytest.raises(ConfigError, match=r"node\.crt holds no readable x509"):
        check_identity(ident, d, NOW)
    ident.tls_cert, ident.host_ca_pem = good_cert, b""
    with pytest.raises(ConfigError, match=r"host_ca\.crt holds no readable CA"):
        check_identity(ident, d, NOW)
    ident.host_ca_pem = good_ca + b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ConfigError, match=r"host_ca\.crt"):
        check_identity(ident, d, NOW)
    ident.host_ca_pem, ident.key = good_ca, generate_private_key()
    with pytest.raises(ConfigError, match=r"node\.crt is not the certificate of .*node\.key"):
        check_identity(ident, d, NOW)
    ident.key = good_key
    good_ssh, good_user_ca = ident.ssh_cert, ident.user_ca_ssh
    ident.ssh_cert = "ssh-ed25519-cert-v01@openssh.com AAAAgarbage"
    with pytest.raises(ConfigError, match=r"node-cert\.pub holds no readable SSH host cert"):
        check_identity(ident, d, NOW)
    other = CertAuthority.generate("host", "example")
    ident.ssh_cert = other.sign_ssh_host_cert(
        generate_private_key().public_key(), key_id="n2", principals=["n2"]
    )
    with pytest.raises(ConfigError, match=r"node-cert\.pub is not the certificate of"):
        check_identity(ident, d, NOW)
    ident.ssh_cert, ident.user_ca_ssh = good_ssh, "\n"
    with pytest.raises(ConfigError, match=r"user_ca\.pub holds no readable user CA key"):
        check_identity(ident, d, NOW)
    ident.user_ca_ssh = good_user_ca + "\nssh-ed25519 garbage"
    with pytest.raises(ConfigError, match=r"user_ca\.pub"):
        check_identity(ident, d, NOW)
    ident.user_ca_ssh = good_user_ca
    with pytest.raises(ConfigError, match=r"node\.crt expired at .* \(this device's clock says"):
        check_identity(ident, d, NOW + 7200)
    # A clock ahead by less than --max-clock-skew: the hub's time decides, not this one's.
    check_identity(ident, d, NOW + 7200, slack=86400)
    (d / "rotation.json").write_text("{}")  # after a rotation the certificate came from there
    with pytest.raises(ConfigError, match=r"rotation\.json expired at") as err:
        check_identity(ident, d, NOW + 7200)
    assert "\n" not in str(err.value) and "new join token" in str(err.value)
