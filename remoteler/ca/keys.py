"""Ed25519 key generation, serialisation, CA pins and secret-file handling.

The CA keys are stored in OpenSSH's own private key format so that operators
can inspect them with ``ssh-keygen -y -f user_ca.key``. Pins follow Teleport's
``--ca-pin``: ``"sha256:" + hex(sha256(DER SubjectPublicKeyInfo))``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from .. import fsutil
from ..fsutil import write_file_atomic, write_secret_file
from .errors import CAError

__all__ = [
    "check_secret_file_mode",
    "generate_private_key",
    "pin_of_cert_pem",
    "private_key_from_openssh",
    "private_key_to_openssh",
    "private_key_to_pkcs8_pem",
    "public_key_from_openssh",
    "public_key_to_openssh",
    "spki_pin",
    "write_file_atomic",
    "write_secret_file",
]


def generate_private_key() -> Ed25519PrivateKey:
    """Return a fresh Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def private_key_to_openssh(key: Ed25519PrivateKey) -> bytes:
    """Serialise ``key`` as an unencrypted ``OPENSSH PRIVATE KEY`` PEM.

    The result is a secret: store it with :func:`write_secret_file`.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def private_key_to_pkcs8_pem(key: Ed25519PrivateKey) -> bytes:
    """Serialise ``key`` as an unencrypted PKCS#8 PEM, as ``ssl.load_cert_chain`` wants."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_key_from_openssh(data: bytes) -> Ed25519PrivateKey:
    """Load an unencrypted OpenSSH Ed25519 private key; raise :class:`CAError` otherwise."""
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CAError(
            f"cannot read OpenSSH private key ({exc}); expected an unencrypted "
            "'-----BEGIN OPENSSH PRIVATE KEY-----' file"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CAError("private key is not Ed25519; generate one with 'ssh-keygen -t ed25519'")
    return key


def public_key_to_openssh(pub: Ed25519PublicKey, comment: str = "") -> str:
    """Return the authorized_keys form ``"ssh-ed25519 AAAA... comment"``."""
    line = pub.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode("ascii")
    if comment:
        _check_comment(comment)
        line = f"{line} {comment}"
    return line


def public_key_from_openssh(line: str) -> Ed25519PublicKey:
    """Parse ``"ssh-ed25519 AAAA... [comment]"``; raise :class:`CAError` on anything else."""
    fields = line.strip().split(maxsplit=2)
    if len(fields) < 2:
        raise CAError("not an OpenSSH public key line; expected 'ssh-ed25519 AAAA... [comment]'")
    try:
        key = serialization.load_ssh_public_key(f"{fields[0]} {fields[1]}".encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise CAError(
            f"cannot read OpenSSH public key ({exc}); expected 'ssh-ed25519 AAAA... [comment]'"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise CAError(f"public key type {fields[0]!r} is not supported here; use ssh-ed25519")
    return key


def spki_pin(pub: PublicKeyTypes) -> str:
    """Return ``"sha256:<64 hex>"`` over the DER SubjectPublicKeyInfo of ``pub``."""
    der = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def pin_of_cert_pem(pem: bytes) -> str:
    """Return the pin of the public key inside an x509 certificate PEM."""
    try:
        cert = x509.load_pem_x509_certificate(pem)
        return spki_pin(cert.public_key())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CAError(f"cannot read x509 certificate PEM ({exc})") from None


def check_secret_file_mode(path: Path) -> None:
    """Raise :class:`CAError` if ``path`` grants any access to group or other.

    Like OpenSSH's "UNPROTECTED PRIVATE KEY FILE" check, any group/other bit
    (not only read) is refused.
    """
    fsutil.check_secret_file_mode(path, CAError)


def _check_comment(comment: str) -> None:
    if "\n" in comment or "\r" in comment:
        raise CAError("key comment must be a single line")
