from __future__ import annotations

import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from remoteler.ca import (
    DEFAULT_USER_EXTENSIONS,
    CAError,
    CertAuthority,
    cert_common_name,
    cert_not_after,
    cert_organization,
    generate_private_key,
    parse_certificate,
    pin_of_cert_pem,
    public_key_from_openssh,
)

NOW = 1_700_000_000


def test_generate(user_ca: CertAuthority) -> None:
    assert user_ca.kind == "user" and user_ca.cluster == "example"
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", user_ca.pin())
    assert pin_of_cert_pem(user_ca.x509_pem) == user_ca.pin()
    assert re.fullmatch(r"ssh-ed25519 AAAA\S+ remoteler-user-ca@example", user_ca.ssh_public_line())
    assert user_ca.trusted_user_ca_line() == user_ca.ssh_public_line()
    assert "PRIVATE" not in repr(user_ca) and user_ca.pin() in repr(user_ca)


def test_root_certificate(user_ca: CertAuthority) -> None:
    root = x509.load_pem_x509_certificate(user_ca.x509_pem)
    assert root.issuer == root.subject
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = root.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    lifetime = root.not_valid_after_utc - root.not_valid_before_utc
    assert timedelta(days=3650) < lifetime <= timedelta(days=3650, minutes=6)
    assert root.not_valid_before_utc < datetime.now(UTC) - timedelta(minutes=4)
    root.verify_directly_issued_by(root)
    assert cert_common_name(user_ca.x509_pem) == "remoteler-user-ca"
    assert cert_organization(user_ca.x509_pem) == "example"


def test_host_ca_lines(host_ca: CertAuthority) -> None:
    assert host_ca.known_hosts_line() == f"@cert-authority * {host_ca.ssh_public_line()}"
    assert host_ca.known_hosts_line("*.example.com").startswith("@cert-authority *.example.com ")
    with pytest.raises(CAError):
        host_ca.known_hosts_line("a b")
    with pytest.raises(CAError, match="user CA"):
        host_ca.trusted_user_ca_line()


def test_kind_misuse(user_ca: CertAuthority, host_ca: CertAuthority) -> None:
    pub = generate_private_key().public_key()
    with pytest.raises(CAError, match="host CA"):
        user_ca.sign_ssh_host_cert(pub, key_id="n", principals=["n"])
    with pytest.raises(CAError, match="user CA"):
        host_ca.sign_ssh_user_cert(pub, key_id="u", principals=["u"], ttl_seconds=60)
    with pytest.raises(CAError, match="host CA"):
        user_ca.known_hosts_line()
    with pytest.raises(CAError):
        CertAuthority.generate("admin", "x")  # type: ignore[arg-type]
    with pytest.raises(CAError, match="cluster"):
        CertAuthority.generate("user", "bad name")


def test_user_cert_defaults(user_ca: CertAuthority) -> None:
    line = user_ca.sign_ssh_user_cert(
        generate_private_key().public_key(),
        key_id="alice",
        principals=["alice"],
        ttl_seconds=3600,
        now=NOW,
    )
    cert = parse_certificate(line)
    assert cert.signature_valid and cert.cert_type == "user"
    assert dict(cert.extensions) == dict(DEFAULT_USER_EXTENSIONS)
    assert dict(cert.critical_options) == {}
    assert (cert.valid_after, cert.valid_before) == (NOW - 60, NOW + 3600)
    other = parse_certificate(
        user_ca.sign_ssh_user_cert(
            generate_private_key().public_key(), key_id="a", principals=["a"], ttl_seconds=1
        )
    )
    assert other.serial != cert.serial  # random serials


def test_user_cert_custom_extensions_replace_defaults(user_ca: CertAuthority) -> None:
    line = user_ca.sign_ssh_user_cert(
        generate_private_key().public_key(),
        key_id="ci",
        principals=["deploy"],
        ttl_seconds=60,
        extensions={"permit-pty": ""},
        serial=5,
    )
    cert = parse_certificate(line)
    assert dict(cert.extensions) == {"permit-pty": ""} and cert.serial == 5


@pytest.mark.parametrize("ttl", [0, -1, 1.5, True])
def test_bad_ttl(user_ca: CertAuthority, ttl: object) -> None:
    with pytest.raises(CAError, match="ttl"):
        user_ca.sign_ssh_user_cert(
            generate_private_key().public_key(),
            key_id="a",
            principals=["a"],
            ttl_seconds=ttl,  # type: ignore[arg-type]
        )


def test_empty_principals_refused(user_ca: CertAuthority, host_ca: CertAuthority) -> None:
    pub = generate_private_key().public_key()
    with pytest.raises(CAError, match="principal"):
        user_ca.sign_ssh_user_cert(pub, key_id="a", principals=[], ttl_seconds=60)
    with pytest.raises(CAError, match="principal"):
        host_ca.sign_ssh_host_cert(pub, key_id="a", principals=[])


def test_save_load_roundtrip(
    tmp_path: Path, user_ca: CertAuthority, host_ca: CertAuthority
) -> None:
    directory = tmp_path / "ca"
    assert not CertAuthority.exists(directory, "user")
    user_ca.save(directory)
    host_ca.save(directory)
    assert CertAuthority.exists(directory, "user") and CertAuthority.exists(directory, "host")
    assert sorted(p.name for p in directory.iterdir()) == [
        "host_ca.crt",
        "host_ca.key",
        "host_ca.pub",
        "user_ca.crt",
        "user_ca.key",
        "user_ca.pub",
    ]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "user_ca.key").stat().st_mode) == 0o600
    assert (
        (directory / "user_ca.key").read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    )
    assert (directory / "user_ca.pub").read_text() == user_ca.ssh_public_line() + "\n"

    loaded = CertAuthority.load(directory, "user")
    assert loaded.pin() == user_ca.pin()
    assert loaded.cluster == "example" and loaded.kind == "user"
    assert loaded.x509_pem == user_ca.x509_pem
    assert CertAuthority.load(directory, "host").pin() == host_ca.pin()
    # Loaded CA still signs certificates that verify under the same pin.
    line = loaded.sign_ssh_user_cert(
        generate_private_key().public_key(), key_id="a", principals=["a"], ttl_seconds=60
    )
    cert = parse_certificate(line)
    assert cert.signature_valid
    assert public_key_from_openssh(user_ca.ssh_public_line()) == cert.ca_public


def test_load_refuses_open_key_file(tmp_path: Path, user_ca: CertAuthority) -> None:
    user_ca.save(tmp_path)
    (tmp_path / "user_ca.key").chmod(0o644)
    with pytest.raises(CAError, match="chmod 600"):
        CertAuthority.load(tmp_path, "user")


def test_load_missing(tmp_path: Path) -> None:
    with pytest.raises(CAError, match="missing"):
        CertAuthority.load(tmp_path, "host")


def test_load_refuses_mismatched_files(tmp_path: Path, user_ca: CertAuthority) -> None:
    user_ca.save(tmp_path)
    other = CertAuthority.generate("user", "example")
    (tmp_path / "user_ca.crt").write_bytes(other.x509_pem)
    with pytest.raises(CAError, match="does not match"):
        CertAuthority.load(tmp_path, "user")
    (tmp_path / "user_ca.crt").write_bytes(user_ca.x509_pem)
    (tmp_path / "user_ca.pub").write_text(other.ssh_public_line())
    with pytest.raises(CAError, match="does not match"):
        CertAuthority.load(tmp_path, "user")


def test_issue_x509(user_ca: CertAuthority) -> None:
    subject = generate_private_key().public_key()
    start = int(datetime.now(UTC).timestamp())
    pem = user_ca.issue_x509(
        subject,
        common_name="alice",
        organization="admins",
        usage="both",
        dns_names=["hub.example.com"],
        ip_addresses=["127.0.0.1", "::1"],
        ttl_seconds=3600,
        now=start,
    )
    cert = x509.load_pem_x509_certificate(pem)
    root = x509.load_pem_x509_certificate(user_ca.x509_pem)
    cert.verify_directly_issued_by(root)
    assert cert_common_name(pem) == "alice" and cert_organization(pem) == "admins"
    assert cert_common_name(cert.public_bytes(serialization.Encoding.DER)) == "alice"
    assert cert_not_after(pem) == datetime.fromtimestamp(start + 3600, UTC)
    assert cert.not_valid_before_utc == datetime.fromtimestamp(start - 300, UTC)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hub.example.com"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert pin_of_cert_pem(pem) != user_ca.pin()


def test_issue_x509_capped_at_root_expiry(user_ca: CertAuthority) -> None:
    pem = user_ca.issue_x509(
        generate_private_key().public_key(),
        common_name="node",
        usage="client",
        ttl_seconds=20 * 365 * 86400,
    )
    assert cert_not_after(pem) == cert_not_after(user_ca.x509_pem)


def test_issue_x509_errors(user_ca: CertAuthority) -> None:
    subject = generate_private_key().public_key()
    with pytest.raises(CAError, match="IP address"):
        user_ca.issue_x509(
            subject, common_name="a", usage="client", ip_addresses=["hub"], ttl_seconds=60
        )
    with pytest.raises(CAError, match="names"):
        user_ca.issue_x509(subject, common_name="x" * 65, usage="client", ttl_seconds=60)
    with pytest.raises(CAError, match="usage"):
        user_ca.issue_x509(subject, common_name="a", usage="admin", ttl_seconds=60)  # type: ignore[arg-type]
    with pytest.raises(CAError):
        cert_common_name(b"garbage")


def test_signed_by_tells_the_issuing_ca_apart() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    from remoteler.ca import CertAuthority, generate_private_key, signed_by

    ca, other = CertAuthority.generate("host", "t"), CertAuthority.generate("host", "t")
    key = generate_private_key()
    cert = x509.load_pem_x509_certificate(
        ca.issue_x509(
            key.public_key(),
            common_name="n",
            organization="remoteler-node",
            usage="client",
            ttl_seconds=60,
        )
    )
    assert signed_by(cert, ca.public_key)
    assert not signed_by(cert, other.public_key)
    assert not signed_by(cert, ec.generate_private_key(ec.SECP256R1()).public_key())
