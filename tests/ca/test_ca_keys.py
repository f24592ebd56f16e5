from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from require import require_binary

from remoteler.ca import (
    CAError,
    check_secret_file_mode,
    generate_private_key,
    make_root,
    pin_of_cert_pem,
    private_key_from_openssh,
    private_key_to_openssh,
    private_key_to_pkcs8_pem,
    public_key_from_openssh,
    public_key_to_openssh,
    spki_pin,
    write_secret_file,
)


def _raw(pub: object) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # type: ignore[attr-defined, no-any-return]


def test_private_key_openssh_roundtrip() -> None:
    key = generate_private_key()
    pem = private_key_to_openssh(key)
    assert pem.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert _raw(private_key_from_openssh(pem).public_key()) == _raw(key.public_key())


def test_private_key_pkcs8() -> None:
    key = generate_private_key()
    assert private_key_to_pkcs8_pem(key).startswith(b"-----BEGIN PRIVATE KEY-----")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"garbage",
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----",
    ],
)
def test_private_key_garbage(data: bytes) -> None:
    with pytest.raises(CAError):
        private_key_from_openssh(data)


def test_private_key_rejects_non_ed25519() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    with pytest.raises(CAError, match="Ed25519"):
        private_key_from_openssh(pem)


def test_public_key_openssh_roundtrip() -> None:
    pub = generate_private_key().public_key()
    line = public_key_to_openssh(pub, "alice@laptop")
    assert re.fullmatch(r"ssh-ed25519 AAAA[A-Za-z0-9+/=]+ alice@laptop", line)
    assert public_key_to_openssh(pub).count(" ") == 1
    assert _raw(public_key_from_openssh(line + "\n")) == _raw(pub)


@pytest.mark.parametrize(
    "line",
    ["", "ssh-ed25519", "ssh-ed25519 !!!notbase64", "ssh-ed25519 AAAA", "hello world", "é é"],
)
def test_public_key_garbage(line: str) -> None:
    with pytest.raises(CAError, match="ssh-ed25519"):
        public_key_from_openssh(line)


def test_public_key_rejects_other_types() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    line = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    with pytest.raises(CAError, match="not supported"):
        public_key_from_openssh(line)


def test_pins() -> None:
    key = generate_private_key()
    pin = spki_pin(key.public_key())
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", pin)
    assert pin_of_cert_pem(make_root(key, "test-ca", "example")) == pin
    assert spki_pin(generate_private_key().public_key()) != pin
    with pytest.raises(CAError):
        pin_of_cert_pem(b"not a certificate")


def test_write_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    old_umask = os.umask(0)  # a permissive umask must not widen the mode
    try:
        write_secret_file(path, b"one")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"one"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    write_secret_file(path, b"two")  # replaces, and the new file is 0600 again
    assert path.read_bytes() == b"two"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]  # no temp file left


def test_check_secret_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "k"
    write_secret_file(path, b"x")
    check_secret_file_mode(path)
    for mode in (0o644, 0o640, 0o604):
        path.chmod(mode)
        with pytest.raises(CAError, match="chmod 600"):
            check_secret_file_mode(path)
    with pytest.raises(CAError, match="does not exist"):
        check_secret_file_mode(tmp_path / "missing")


def test_openssh_interop(tmp_path: Path) -> None:
    require_binary("ssh-keygen")
    # Our private key file is readable by ssh-keygen ...
    key = generate_private_key()
    ours = tmp_path / "ours"
    write_secret_file(ours, private_key_to_openssh(key))
    out = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(ours)], capture_output=True, text=True, check=True
    ).stdout
    assert _raw(public_key_from_openssh(out)) == _raw(key.public_key())
    # ... and ssh-keygen's is readable by us.
    theirs = tmp_path / "theirs"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "x", "-f", str(theirs)], check=True
    )
    loaded = private_key_from_openssh(theirs.read_bytes())
    pub = public_key_from_openssh((tmp_path / "theirs.pub").read_text())
    assert _raw(loaded.public_key()) == _raw(pub)
