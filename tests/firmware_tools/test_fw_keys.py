"""Signing keys: OpenSSH formats, file modes, ids that ssh-keygen agrees with."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from require import require_binary

from firmware_tools.keys import (
    key_id,
    load_public_key,
    load_signing_key,
    load_trusted_keys,
    write_key_pair,
)
from remoteler.errors import ConfigError


def test_write_and_load(tmp_path: Path) -> None:
    path = tmp_path / "fw.key"
    pub = write_key_pair(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_signing_key(path).public_key() == pub
    assert load_trusted_keys(Path(f"{path}.pub")) == [pub]
    with pytest.raises(ConfigError, match="exists"):
        write_key_pair(path)


def test_interop_with_ssh_keygen(tmp_path: Path) -> None:
    require_binary("ssh-keygen")
    ours = tmp_path / "ours"
    pub = write_key_pair(ours)
    out = subprocess.run(
        ["ssh-keygen", "-lf", f"{ours}.pub"], capture_output=True, text=True, check=True
    ).stdout
    assert out.split()[1] == key_id(pub)
    theirs = tmp_path / "theirs"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(theirs)], check=True)
    key = load_signing_key(theirs)
    assert key.public_key() == load_public_key(Path(f"{theirs}.pub").read_text())


def test_refusals(tmp_path: Path) -> None:
    path = tmp_path / "fw.key"
    write_key_pair(path)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_signing_key(path)
    rsa_key = tmp_path / "rsa.key"
    rsa_key.write_bytes(
        rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    rsa_key.chmod(0o600)
    with pytest.raises(ConfigError, match="Ed25519"):
        load_signing_key(rsa_key)
    with pytest.raises(ConfigError, match="cannot read"):
        load_signing_key(tmp_path / "missing")
    for line in ["", "ssh-rsa AAAA", "ssh-ed25519 !!!", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"]:
        with pytest.raises(ConfigError, match="ssh-ed25519 public key line"):
            load_public_key(line)
    empty = tmp_path / "empty.pub"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="holds no"):
        load_trusted_keys(empty)
