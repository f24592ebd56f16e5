"""A user's identity on disk: the files that ``tsh -i`` and OpenSSH ``ssh -i`` read.

``PATH`` is the OpenSSH private key (0600) and ``PATH-cert.pub`` the SSH
certificate beside it, as OpenSSH expects; ``PATH-tls.crt`` is the x509 client
certificate for the hub and ``PATH-ca.crt`` the hub's CA (what ``tsh`` trusts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from remoteler.ca import (
    CAError,
    check_secret_file_mode,
    parse_certificate,
    private_key_from_openssh,
    private_key_to_openssh,
    private_key_to_pkcs8_pem,
    write_secret_file,
)
from remoteler.errors import AuthError, ConfigError


@dataclass
class UserIdentity:
    key: Ed25519PrivateKey
    ssh_cert: str
    tls_cert: bytes
    host_ca_pem: bytes

    @property
    def key_pem(self) -> bytes:
        return private_key_to_pkcs8_pem(self.key)

    @property
    def valid_before(self) -> int:
        return parse_certificate(self.ssh_cert).valid_before

    @property
    def user(self) -> str:
        return parse_certificate(self.ssh_cert).key_id

    @property
    def logins(self) -> tuple[str, ...]:
        return tuple(parse_certificate(self.ssh_cert).principals)


def identity_paths(path: Path) -> tuple[Path, Path, Path, Path]:
    return (
        path,
        path.with_name(path.name + "-cert.pub"),
        path.with_name(path.name + "-tls.crt"),
        path.with_name(path.name + "-ca.crt"),
    )


def write_identity_file(
    path: Path, key: Ed25519PrivateKey, ssh_cert: str, tls_cert: bytes, host_ca_pem: bytes
) -> list[Path]:
    key_path, cert_path, tls_path, ca_path = identity_paths(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret_file(key_path, private_key_to_openssh(key))
    cert_path.write_text(ssh_cert.strip() + "\n")
    tls_path.write_bytes(tls_cert)
    ca_path.write_bytes(host_ca_pem)
    return [key_path, cert_path, tls_path, ca_path]


def read_identity_file(path: Path) -> UserIdentity:
    key_path, cert_path, tls_path, ca_path = identity_paths(path)
    for p in (key_path, cert_path, tls_path, ca_path):
        if not p.exists():
            raise ConfigError(
                f"identity file {p} is missing; "
                "write it again with 'tctl auth sign' or run 'tsh login'"
            )
    try:
        check_secret_file_mode(key_path)
        key = private_key_from_openssh(key_path.read_bytes())
    except CAError as exc:
        raise ConfigError(f"cannot use {key_path}: {exc}") from None
    ident = UserIdentity(
        key, cert_path.read_text().strip(), tls_path.read_bytes(), ca_path.read_bytes()
    )
    try:
        cert = parse_certificate(ident.ssh_cert)  # parse now so garbage fails here
    except CAError as exc:
        raise ConfigError(f"cannot use {cert_path}: {exc}") from None
    for path, public in ((cert_path, cert.subject_public), (tls_path, _tls_public(ident.tls_cert))):
        if not _same_key(public, key):
            raise ConfigError(
                f"the key {key_path} does not match its certificate {path.name}: the files "
                "come from different logins; run 'tsh login' or 'tctl auth sign' again"
            )
    return ident


def _tls_public(pem: bytes) -> object:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(pem).public_key()
    except ValueError:
        return None


def _same_key(public: object, key: Ed25519PrivateKey) -> bool:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    if not isinstance(public, Ed25519PublicKey):
        return False
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw) == raw


def remove_identity_file(path: Path) -> None:
    for p in identity_paths(path):
        p.unlink(missing_ok=True)


def check_not_expired(ident: UserIdentity, now: float) -> None:
    if ident.valid_before <= now:
        raise AuthError("your certificate has expired: run 'tsh login'")
