"""Firmware signing keys: Ed25519, in OpenSSH's file formats.

The private key is an unencrypted OpenSSH private key file (``-----BEGIN
OPENSSH PRIVATE KEY-----``, what ``ssh-keygen -t ed25519 -N ''`` writes, so
``ssh-keygen`` can make one too), kept 0600; the public key is one
``ssh-ed25519 AAAA... comment`` line. A key's id is its OpenSSH fingerprint
(``SHA256:`` + unpadded base64 of the SHA-256 of the key blob), the string
``ssh-keygen -lf KEY.pub`` prints. An offline key and the hub's key use the
same format: :func:`write_key_pair` and :func:`load_signing_key` serve both.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from remoteler.errors import ConfigError

DEFAULT_COMMENT = "remoteler-firmware-signing"
#: Public key files (trust lists) larger than this are refused unread.
MAX_PUBLIC_FILE = 256 * 1024


def public_line(pub: Ed25519PublicKey, comment: str = DEFAULT_COMMENT) -> str:
    """``ssh-ed25519 AAAA... comment``, without a newline."""
    text = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{text.decode()} {comment}".rstrip()


def generate_key(comment: str = DEFAULT_COMMENT) -> tuple[bytes, bytes]:
    """A new key pair: (OpenSSH private key file bytes, public key line + newline)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return private, (public_line(key.public_key(), comment) + "\n").encode()


def key_id(pub: Ed25519PublicKey) -> str:
    """OpenSSH fingerprint of ``pub``: ``SHA256:`` and 43 base64 characters."""
    line = pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def write_key_pair(path: Path, comment: str = DEFAULT_COMMENT) -> Ed25519PublicKey:
    """Write a new private key to ``path`` (0600, never over an existing file) and
    its public line to ``path.pub``; return the public key."""
    private, public = generate_key(comment)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{path} exists: remove it or choose another -o path") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    pub_path = Path(f"{path}.pub")
    pub_path.write_bytes(public)
    return load_public_key(public.decode())


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an Ed25519 private key file (OpenSSH or PKCS#8 PEM, unencrypted).

    Refuse, as OpenSSH does, a file that group or others may read.
    """
    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes() if st.st_size <= MAX_PUBLIC_FILE else b""
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {p}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"signing key {p} is readable by others: run chmod 600 {p}")
    key: object
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{p} is not an unencrypted Ed25519 private key: make one with "
            "'firmware-tools key generate -o FILE'"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{p} is not an Ed25519 key: firmware is signed with Ed25519 keys only")
    return key


def load_public_key(text: str) -> Ed25519PublicKey:
    """Parse one ``ssh-ed25519 AAAA... [comment]`` line; raise ConfigError if it is not one."""
    fields = text.strip().split()
    bad = ConfigError(
        "not an ssh-ed25519 public key line: use the .pub file 'firmware-tools key generate' wrote"
    )
    if len(fields) < 2 or fields[0] != "ssh-ed25519" or len(fields[1]) > 256:
        raise bad
    try:
        key = serialization.load_ssh_public_key(f"{fields[0]} {fields[1]}".encode())
    except (ValueError, UnsupportedAlgorithm, binascii.Error):
        raise bad from None
    if not isinstance(key, Ed25519PublicKey):
        raise bad
    return key


def load_trusted_keys(path: str | os.PathLike[str]) -> list[Ed25519PublicKey]:
    """Every key of a trust file: ``ssh-ed25519`` lines; blank lines and ``#`` comments skipped."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_PUBLIC_FILE:
            raise ConfigError(f"{p} is larger than {MAX_PUBLIC_FILE} bytes: not a public key file")
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"cannot read public key file {p}: {exc.strerror}") from None
    return [key for key, _line in parse_trusted_keys(text, str(p))]


def parse_trusted_keys(text: str, name: str) -> list[tuple[Ed25519PublicKey, str]]:
    """The keys of a trust file's text, each with its line; ``name`` (the file's) goes
    into the error: :class:`ConfigError` for a bad line or no key at all."""
    if len(text) > MAX_PUBLIC_FILE:
        raise ConfigError(f"{name} is larger than {MAX_PUBLIC_FILE} bytes: not a public key file")
    keys: list[tuple[Ed25519PublicKey, str]] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys.append((load_public_key(line), line.strip()))
        except ConfigError as exc:
            raise ConfigError(f"{name} line {n}: {exc}") from None
    if not keys:
        raise ConfigError(f"{name} holds no ssh-ed25519 key: pass the signing key's .pub file")
    return keys


def key_ids(keys: Sequence[Ed25519PublicKey]) -> list[str]:
    return [key_id(k) for k in keys]
