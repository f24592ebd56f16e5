"""The two certificate authorities of a Remoteler cluster: ``user`` and ``host``.

Each authority is one Ed25519 key used both as the OpenSSH CA key and as the
key of a self-signed x509 root, so one pin identifies it for SSH and for mTLS.
On disk (``CertAuthority.save``)::

    {kind}_ca.key   OpenSSH private key, mode 0600
    {kind}_ca.pub   "ssh-ed25519 AAAA... remoteler-{kind}-ca@{cluster}"
    {kind}_ca.crt   x509 root, PEM
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from . import keys, sshcert
from . import x509 as _x509
from .errors import CAError

__all__ = [
    "DEFAULT_USER_CERT_TTL",
    "SSH_CLOCK_SKEW",
    "CAKind",
    "CertAuthority",
]

CAKind = Literal["user", "host"]

#: Default lifetime of a user certificate, in seconds (12 h); roles may shorten it.
DEFAULT_USER_CERT_TTL: Final = 12 * 3600
#: SSH certificates are valid from this many seconds before ``now``.
SSH_CLOCK_SKEW: Final = 60

_KINDS: Final = ("user", "host")
_CLUSTER_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _check_kind(kind: str) -> CAKind:
    if kind == "user":
        return "user"
    if kind == "host":
        return "host"
    raise CAError(f"CA kind must be 'user' or 'host', not {kind!r}")


def _check_cluster(cluster: str) -> str:
    if not _CLUSTER_RE.fullmatch(cluster):
        raise CAError(
            f"invalid cluster name {cluster!r}: use 1-63 letters, digits, '.', '_' or '-'"
        )
    return cluster


def _common_name(kind: CAKind) -> str:
    return f"remoteler-{kind}-ca"


class CertAuthority:
    """One authority: its key, its x509 root and the certificates it signs.

    Create with :meth:`generate` (then :meth:`save`) or :meth:`load`.
    """

    kind: CAKind
    cluster: str
    private_key: Ed25519PrivateKey
    x509_pem: bytes

    def __init__(
        self, kind: CAKind, cluster: str, private_key: Ed25519PrivateKey, x509_pem: bytes
    ) -> None:
        self.kind = _check_kind(kind)
        self.cluster = _check_cluster(cluster)
        if not isinstance(private_key, Ed25519PrivateKey):
            raise CAError("a CA key must be an Ed25519 private key")
        root = _x509.load_certificate(x509_pem)
        if root.public_key() != private_key.public_key():
            raise CAError(
                f"the {kind} CA certificate does not match its private key; "
                "restore both files from the same backup"
            )
        self.private_key = private_key
        self.x509_pem = x509_pem

    def __repr__(self) -> str:
        # Never include key material.
        return f"<CertAuthority {self.kind} cluster={self.cluster} pin={self.pin()}>"

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def generate(cls, kind: CAKind, cluster: str, *, now: datetime | None = None) -> CertAuthority:
        """Create a new authority with a fresh key; call :meth:`save` to keep it."""
        kind = _check_kind(kind)
        _check_cluster(cluster)
        key = keys.generate_private_key()
        root = _x509.make_root(key, _common_name(kind), cluster, now=now)
        return cls(kind, cluster, key, root)

    @staticmethod
    def paths(directory: Path, kind: CAKind) -> tuple[Path, Path, Path]:
        """Return the ``(key, pub, crt)`` paths of ``kind`` in ``directory``."""
        kind = _check_kind(kind)
        directory = Path(directory)
        return (
            directory / f"{kind}_ca.key",
            directory / f"{kind}_ca.pub",
            directory / f"{kind}_ca.crt",
        )

    @staticmethod
    def exists(directory: Path, kind: CAKind) -> bool:
        """True if ``directory`` holds a private key for ``kind`` (the CA was saved)."""
        return CertAuthority.paths(directory, kind)[0].exists()

    @classmethod
    def load(cls, directory: Path, kind: CAKind) -> CertAuthority:
        """Load a saved authority; raise :class:`CAError` if files are missing or unsafe.

        The key file must not be accessible by group or other, and the public
        key and certificate must match it.
        """
        key_path, pub_path, crt_path = cls.paths(directory, kind)
        for path in (key_path, crt_path):
            if not path.exists():
                raise CAError(
                    f"{path} is missing; initialise the cluster's CAs or restore them from backup"
                )
        keys.check_secret_file_mode(key_path)
        key = keys.private_key_from_openssh(key_path.read_bytes())
        pem = crt_path.read_bytes()
        cluster = _x509.cert_organization(pem)
        authority = cls(kind, cluster, key, pem)
        if pub_path.exists():
            pub = keys.public_key_from_openssh(pub_path.read_text("ascii", errors="replace"))
            if pub != key.public_key():
                raise CAError(
                    f"{pub_path} does not match {key_path}; delete it and save the CA again"
                )
        return authority

    def save(self, directory: Path) -> None:
        """Write the three files atomically, replacing any existing ones.

        ``directory`` is created with mode 0700 if missing. The key is written
        last, so :meth:`exists` is only true once everything is on disk.
        """
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path, pub_path, crt_path = self.paths(directory, self.kind)
        keys.write_file_atomic(crt_path, self.x509_pem, 0o644)
        keys.write_file_atomic(pub_path, (self.ssh_public_line() + "\n").encode("ascii"), 0o644)
        keys.write_secret_file(key_path, keys.private_key_to_openssh(self.private_key))

    # -- identity ----------------------------------------------------------

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The CA's public key."""
        return self.private_key.public_key()

    @property
    def comment(self) -> str:
        """``remoteler-<kind>-ca@<cluster>``, the comment on public key lines."""
        return f"{_common_name(self.kind)}@{self.cluster}"

    def ssh_public_line(self) -> str:
        """``"ssh-ed25519 AAAA... remoteler-<kind>-ca@<cluster>"``."""
        return keys.public_key_to_openssh(self.public_key, self.comment)

    def pin(self) -> str:
        """``"sha256:<hex>"`` of the SubjectPublicKeyInfo, as Teleport's ``--ca-pin``."""
        return keys.spki_pin(self.public_key)

    def known_hosts_line(self, pattern: str = "*") -> str:
        """The known_hosts line making clients trust host certificates from this (host) CA."""
        self._require("host", "known_hosts_line")
        if not pattern or any(c.isspace() for c in pattern):
            raise CAError("known_hosts pattern must be non-empty without whitespace")
        return f"@cert-authority {pattern} {self.ssh_public_line()}"

    def trusted_user_ca_line(self) -> str:
        """The line for sshd's ``TrustedUserCAKeys`` file (user CA only)."""
        self._require("user", "trusted_user_ca_line")
        return self.ssh_public_line()

    # -- signing -----------------------------------------------------------

    def sign_ssh_user_cert(
        self,
        subject_public: sshcert.SubjectPublicKey,
        *,
        key_id: str,
        principals: Sequence[str],
        ttl_seconds: int,
        now: int | None = None,
        extensions: Mapping[str, str] | None = None,
        critical_options: Mapping[str, str] | None = None,
        serial: int | None = None,
    ) -> str:
        """Return an OpenSSH user certificate line for ``subject_public``.

        Valid from ``now - 60`` s (clock skew) to ``now + ttl_seconds``.
        ``extensions=None`` means :data:`DEFAULT_USER_EXTENSIONS`; pass the
        project's own (``remoteler-roles@remoteler``) merged into those.
        ``principals`` must not be empty: an empty list would allow any login.
        ``serial=None`` picks a random 63-bit serial.
        """
        self._require("user", "sign_ssh_user_cert")
        if not principals:
            raise CAError("a user certificate needs at least one principal (login)")
        now = _now(now)
        _check_ttl(ttl_seconds)
        spec = sshcert.CertSpec(
            cert_type="user",
            key_id=key_id,
            principals=tuple(principals),
            valid_after=max(0, now - SSH_CLOCK_SKEW),
            valid_before=now + ttl_seconds,
            serial=_serial(serial),
            critical_options=dict(critical_options or {}),
            extensions=dict(sshcert.DEFAULT_USER_EXTENSIONS if extensions is None else extensions),
        )
        return self._sign(spec, subject_public)

    def sign_ssh_host_cert(
        self,
        subject_public: sshcert.SubjectPublicKey,
        *,
        key_id: str,
        principals: Sequence[str],
        ttl_seconds: int | None = None,
        now: int | None = None,
        serial: int | None = None,
    ) -> str:
        """Return an OpenSSH host certificate line for ``subject_public``.

        ``ttl_seconds=None`` makes it valid forever (valid_after 0, valid_before
        0xFFFFFFFFFFFFFFFF, shown as "forever" by ``ssh-keygen -L``); only a CA
        rotation invalidates it. ``principals`` are the names clients connect to.
        """
        self._require("host", "sign_ssh_host_cert")
        if not principals:
            raise CAError("a host certificate needs at least one principal (host name)")
        if ttl_seconds is None:
            valid_after, valid_before = 0, sshcert.VALID_FOREVER
        else:
            _check_ttl(ttl_seconds)
            now = _now(now)
            valid_after, valid_before = max(0, now - SSH_CLOCK_SKEW), now + ttl_seconds
        spec = sshcert.CertSpec(
            cert_type="host",
            key_id=key_id,
            principals=tuple(principals),
            valid_after=valid_after,
            valid_before=valid_before,
            serial=_serial(serial),
        )
        return self._sign(spec, subject_public)

    def issue_x509(
        self,
        subject_public: CertificatePublicKeyTypes,
        *,
        common_name: str,
        organization: str | None = None,
        usage: Literal["client", "server", "both"],
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        ttl_seconds: int,
        now: int | None = None,
    ) -> bytes:
        """Return a PEM leaf certificate signed by this CA's x509 root.

        Valid from ``now`` minus 5 minutes to ``now + ttl_seconds``, capped at
        the root's expiry (so a 10-year TTL is fine; check ``cert_not_after``).
        """
        _check_ttl(ttl_seconds)
        start = datetime.fromtimestamp(_now(now), UTC)
        return _x509.issue_cert(
            self.private_key,
            self.x509_pem,
            subject_public,
            common_name=common_name,
            organization=organization,
            usage=usage,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            not_before=start - _x509.CLOCK_SKEW,
            not_after=start + timedelta(seconds=ttl_seconds),
        )

    # -- helpers -----------------------------------------------------------

    def _sign(self, spec: sshcert.CertSpec, subject_public: sshcert.SubjectPublicKey) -> str:
        blob = sshcert.encode_certificate(spec, subject_public, self.private_key)
        return sshcert.certificate_to_openssh(blob)

    def _require(self, kind: CAKind, operation: str) -> None:
        if self.kind != kind:
            raise CAError(f"{operation} needs the {kind} CA, but this is the {self.kind} CA")


def _now(now: int | None) -> int:
    return int(time.time()) if now is None else now


def _check_ttl(ttl_seconds: int) -> None:
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise CAError(f"ttl_seconds must be a positive integer, got {ttl_seconds!r}")


def _serial(serial: int | None) -> int:
    return secrets.randbits(63) if serial is None else serial
