from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncssh
import pytest
from asyncssh.public_key import SSHOpenSSHCertificate
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from require import require_binary

from remoteler.ca import (
    DEFAULT_USER_EXTENSIONS,
    VALID_FOREVER,
    CAError,
    CertAuthority,
    CertSpec,
    certificate_to_openssh,
    encode_certificate,
    generate_private_key,
    parse_certificate,
    private_key_to_openssh,
    spki_pin,
    write_secret_file,
)

SSH_KEYGEN = shutil.which("ssh-keygen")

NOW = 1_700_000_000  # 2023-11-14T22:13:20Z
ROLES = "remoteler-roles@remoteler"


def _asyncssh_cert(line: str) -> SSHOpenSSHCertificate:
    cert = asyncssh.import_certificate(line)
    assert isinstance(cert, SSHOpenSSHCertificate)
    return cert


def _utc(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _user_line(ca: CertAuthority, **overrides: object) -> str:
    kwargs: dict[str, object] = {
        "key_id": "alice",
        "principals": ["root", "alice"],
        "ttl_seconds": 8 * 3600,
        "now": NOW,
        "extensions": {**DEFAULT_USER_EXTENSIONS, ROLES: "admin,dev"},
        "serial": 42,
    }
    kwargs.update(overrides)
    return ca.sign_ssh_user_cert(generate_private_key().public_key(), **kwargs)  # type: ignore[arg-type]


# -- read by OpenSSH -----------------------------------------------------------


def test_user_cert_read_by_ssh_keygen(
    user_ca: CertAuthority, ssh_keygen_list: Callable[[str], str]
) -> None:
    line = _user_line(user_ca, critical_options={"source-address": "10.0.0.0/8"})
    out = ssh_keygen_list(line)
    assert "Type: ssh-ed25519-cert-v01@openssh.com user certificate" in out
    assert 'Key ID: "alice"' in out
    assert "Serial: 42" in out
    assert f"Valid: from {_utc(NOW - 60)} to {_utc(NOW + 8 * 3600)}" in out
    principals = out.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["root", "alice"]
    assert "source-address 10.0.0.0/8" in out
    extensions = out.split("Extensions:")[1]
    for name in DEFAULT_USER_EXTENSIONS:
        assert f"\n                {name}\n" in extensions
    # ssh-keygen prints unknown extensions' data as hex: string("admin,dev").
    wrapped = (b"\x00\x00\x00\x09admin,dev").hex()
    assert f"{ROLES} UNKNOWN OPTION: {wrapped}" in extensions


def test_host_cert_forever_read_by_ssh_keygen(
    host_ca: CertAuthority, ssh_keygen_list: Callable[[str], str]
) -> None:
    line = host_ca.sign_ssh_host_cert(
        generate_private_key().public_key(), key_id="node-1", principals=["node-1", "127.0.0.1"]
    )
    out = ssh_keygen_list(line)
    assert "host certificate" in out
    assert 'Key ID: "node-1"' in out
    assert "Valid: forever" in out
    assert out.split("Principals:")[1].split("Critical Options:")[0].split() == [
        "node-1",
        "127.0.0.1",
    ]
    assert "Extensions: (none)" in out
    parsed = parse_certificate(line)
    assert parsed.forever and parsed.valid_before == VALID_FOREVER and parsed.valid_after == 0


def test_host_cert_with_ttl(host_ca: CertAuthority, ssh_keygen_list: Callable[[str], str]) -> None:
    line = host_ca.sign_ssh_host_cert(
        generate_private_key().public_key(),
        key_id="n",
        principals=["n"],
        ttl_seconds=3600,
        now=NOW,
    )
    assert f"Valid: from {_utc(NOW - 60)} to {_utc(NOW + 3600)}" in ssh_keygen_list(line)


@pytest.mark.parametrize(
    ("subject", "cert_type", "label"),
    [
        (ec.generate_private_key(ec.SECP256R1()).public_key(), "ecdsa-sha2-nistp256", "ECDSA"),
        (ec.generate_private_key(ec.SECP384R1()).public_key(), "ecdsa-sha2-nistp384", "ECDSA"),
        (
            rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
            "ssh-rsa",
            "RSA",
        ),
    ],
)
def test_other_subject_key_types(
    user_ca: CertAuthority,
    ssh_keygen_list: Callable[[str], str],
    subject: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    cert_type: str,
    label: str,
) -> None:
    line = user_ca.sign_ssh_user_cert(subject, key_id="k", principals=["p"], ttl_seconds=60)
    assert line.startswith(f"{cert_type}-cert-v01@openssh.com ")
    out = ssh_keygen_list(line)
    assert f"Public key: {label}-CERT" in out
    parsed = parse_certificate(line)
    assert parsed.signature_valid
    assert spki_pin(parsed.subject_public) == spki_pin(subject)
    assert _asyncssh_cert(line).principals == ["p"]


def test_ssh_keygen_rejects_tampered_cert(
    user_ca: CertAuthority, ssh_keygen_list: Callable[[str], str]
) -> None:
    line = _user_line(user_ca, key_id="operator-7")
    tampered = _replace_in_blob(line, b"operator-7", b"operator-0")
    with pytest.raises(AssertionError, match="ssh-keygen -L failed"):
        ssh_keygen_list(tampered)
    assert parse_certificate(tampered).signature_valid is False
    assert parse_certificate(line).signature_valid is True


def test_parse_cert_signed_by_ssh_keygen(user_ca: CertAuthority, tmp_path: Path) -> None:
    """Our parser reads what OpenSSH writes, with our CA key."""
    require_binary("ssh-keygen")
    ca_file = tmp_path / "ca"
    write_secret_file(ca_file, private_key_to_openssh(user_ca.private_key))
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True
    )
    subprocess.run(
        [
            *("ssh-keygen", "-q", "-s", str(ca_file), "-I", "bob", "-n", "bob,root"),
            *("-z", "7", "-V", "20230101000000Z:20230102000000Z"),
            *("-O", "extension:x@example.com=v", str(tmp_path / "id.pub")),
        ],
        check=True,
    )
    parsed = parse_certificate((tmp_path / "id-cert.pub").read_bytes())
    assert parsed.signature_valid
    assert spki_pin(parsed.ca_public) == user_ca.pin()
    assert (parsed.key_id, parsed.principals, parsed.serial) == ("bob", ("bob", "root"), 7)
    assert parsed.valid_after == int(datetime(2023, 1, 1, tzinfo=UTC).timestamp())
    assert parsed.extensions["x@example.com"] == "v"
    assert parsed.extensions["permit-pty"] == ""


# -- read by asyncssh ----------------------------------------------------------


def test_user_cert_read_by_asyncssh(user_ca: CertAuthority) -> None:
    line = _user_line(user_ca)
    cert = _asyncssh_cert(line)
    assert cert.principals == ["root", "alice"]
    assert cert._key_id == "alice"
    assert cert._valid_before == NOW + 8 * 3600
    assert cert._valid_after == NOW - 60
    assert (
        cert.signing_key.public_data
        == asyncssh.import_public_key(user_ca.ssh_public_line()).public_data
    )


# -- our parser ----------------------------------------------------------------


def test_parse_roundtrip(user_ca: CertAuthority) -> None:
    subject = generate_private_key().public_key()
    spec = CertSpec(
        cert_type="user",
        key_id="alice",
        principals=("alice",),
        valid_after=NOW,
        valid_before=NOW + 10,
        serial=2**64 - 1,
        critical_options={"force-command": "uptime"},
        extensions={"permit-pty": "", ROLES: "admin"},
    )
    blob = encode_certificate(spec, subject, user_ca.private_key)
    line = certificate_to_openssh(blob, "alice@example")
    for source in (line, blob, line.encode()):
        parsed = parse_certificate(source)
        assert parsed.signature_valid
        assert parsed.cert_type == "user"
        assert parsed.key_type == "ssh-ed25519-cert-v01@openssh.com"
        assert (parsed.key_id, parsed.principals, parsed.serial) == ("alice", ("alice",), 2**64 - 1)
        assert (parsed.valid_after, parsed.valid_before) == (NOW, NOW + 10)
        assert dict(parsed.critical_options) == {"force-command": "uptime"}
        assert dict(parsed.extensions) == {"permit-pty": "", ROLES: "admin"}
        assert spki_pin(parsed.ca_public) == user_ca.pin()
        assert spki_pin(parsed.subject_public) == spki_pin(subject)
        assert len(parsed.nonce) == 32
        assert parsed.blob == blob
        assert parsed.is_valid_at(NOW) and not parsed.is_valid_at(NOW + 10)
    assert parse_certificate(line).comment == "alice@example"


def test_options_are_sorted(user_ca: CertAuthority) -> None:
    spec = CertSpec(
        cert_type="user",
        key_id="k",
        principals=("p",),
        valid_after=0,
        valid_before=1,
        extensions={"z": "", "a": "1", "permit-pty": ""},
    )
    parsed = parse_certificate(
        encode_certificate(spec, generate_private_key().public_key(), user_ca.private_key)
    )
    assert list(parsed.extensions) == ["a", "permit-pty", "z"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cert_type": "admin"},
        {"valid_after": 10, "valid_before": 10},
        {"valid_before": 2**64},
        {"serial": -1},
        {"principals": "alice"},
        {"principals": ("",)},
        {"extensions": {"": ""}},
    ],
)
def test_certspec_validation(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {
        "cert_type": "user",
        "key_id": "k",
        "principals": ("p",),
        "valid_after": 0,
        "valid_before": 100,
    }
    with pytest.raises(CAError):
        CertSpec(**{**base, **kwargs})  # type: ignore[arg-type]


def test_every_modified_byte_is_detected(user_ca: CertAuthority) -> None:
    blob = parse_certificate(_user_line(user_ca)).blob
    for i in range(len(blob)):
        mutated = bytearray(blob)
        mutated[i] ^= 0x01
        try:
            parsed = parse_certificate(bytes(mutated))
        except CAError:
            continue
        assert not parsed.signature_valid, f"flipping byte {i} went unnoticed"


def test_every_truncation_raises_caerror(user_ca: CertAuthority) -> None:
    blob = parse_certificate(_user_line(user_ca)).blob
    for n in range(len(blob)):
        with pytest.raises(CAError):
            parse_certificate(blob[:n])
    with pytest.raises(CAError, match="trailing"):
        parse_certificate(blob + b"\x00")


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "ssh-ed25519-cert-v01@openssh.com",
        "ssh-ed25519-cert-v01@openssh.com !!!",
        "ssh-rsa-cert-v01@openssh.com AAAA",
        b"\xff\xfe",
    ],
)
def test_garbage_lines(garbage: str | bytes) -> None:
    with pytest.raises(CAError):
        parse_certificate(garbage)


def test_line_type_must_match_blob(user_ca: CertAuthority) -> None:
    line = _user_line(user_ca)
    with pytest.raises(CAError, match="says"):
        parse_certificate(line.replace("ssh-ed25519-cert", "ssh-rsa-cert", 1))


_SAMPLE_CA = CertAuthority.generate("user", "fuzz")
_SAMPLE_BLOB = parse_certificate(
    _SAMPLE_CA.sign_ssh_user_cert(
        generate_private_key().public_key(),
        key_id="k",
        principals=["p"],
        ttl_seconds=60,
        critical_options={"force-command": "x"},
    )
).blob


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.text(max_size=200),
        st.integers(0, len(_SAMPLE_BLOB)).map(lambda n: _SAMPLE_BLOB[:n]),
        st.tuples(
            st.integers(0, len(_SAMPLE_BLOB) - 1), st.integers(0, 255), st.binary(max_size=8)
        ).map(lambda t: _SAMPLE_BLOB[: t[0]] + bytes([t[1]]) + t[2] + _SAMPLE_BLOB[t[0] + 1 :]),
    )
)
def test_fuzz_parser_only_raises_caerror(data: str | bytes) -> None:
    try:
        parsed = parse_certificate(data)
    except CAError:
        return
    # Anything that parses without error and differs from the original must not verify.
    if parsed.blob != _SAMPLE_BLOB:
        assert not parsed.signature_valid


def _replace_in_blob(line: str, old: bytes, new: bytes) -> str:
    kind, b64 = line.split()[:2]
    blob = base64.b64decode(b64)
    assert blob.count(old) == 1 and len(old) == len(new)
    return f"{kind} {base64.b64encode(blob.replace(old, new)).decode()}"
