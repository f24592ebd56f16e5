"""x509 roots and leaf certificates for mTLS on the hub's websockets.

Each authority's Ed25519 key doubles as the key of a self-signed root, so the
CA pin (sha256 of the SubjectPublicKeyInfo) is the same for SSH and TLS.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import CAError

__all__ = [
    "CLOCK_SKEW",
    "ROOT_VALIDITY",
    "cert_common_name",
    "cert_not_after",
    "cert_organization",
    "issue_cert",
    "load_certificate",
    "make_root",
    "split_pem_bundle",
]

#: How far certificates are backdated so that slightly slow clocks accept them.
CLOCK_SKEW: Final = timedelta(minutes=5)
#: Lifetime of a self-signed root.
ROOT_VALIDITY: Final = timedelta(days=3650)

_USAGES: Final = {
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "server": [ExtendedKeyUsageOID.SERVER_AUTH],
    "both": [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
}


def make_root(
    key: Ed25519PrivateKey, common_name: str, cluster: str, *, now: datetime | None = None
) -> bytes:
    """Return a PEM self-signed CA certificate for ``key`` (valid 10 years).

    ``cluster`` goes in the subject's Organization, where :func:`cert_organization`
    finds it again.
    """
    now = _utc(now)
    name = _name(common_name, cluster)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, algorithm=None)
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def issue_cert(
    ca_key: Ed25519PrivateKey,
    ca_cert_pem: bytes,
    subject_public: CertificatePublicKeyTypes,
    *,
    common_name: str,
    organization: str | None = None,
    usage: Literal["client", "server", "both"],
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    not_before: datetime | None = None,
    not_after: datetime,
) -> bytes:
    """Issue a leaf certificate for ``subject_public`` signed by the root ``ca_cert_pem``.

    ``not_before`` defaults to now minus :data:`CLOCK_SKEW`; ``not_after`` is
    capped at the root's expiry. Raises :class:`CAError` if ``ca_key`` does not
    match the root, if the validity window is empty, or on a bad name or address.
    """
    if usage not in _USAGES:
        raise CAError(f"usage must be 'client', 'server' or 'both', not {usage!r}")
    ca_cert = load_certificate(ca_cert_pem)
    if ca_cert.public_key() != ca_key.public_key():
        raise CAError("the CA key does not match the CA certificate; reload the authority")
    start = _utc(not_before) if not_before is not None else _utc(None) - CLOCK_SKEW
    end = _utc(not_after)
    if end <= start:
        raise CAError(f"not_after ({end}) must be after not_before ({start}); check the TTL")
    # A leaf cannot usefully outlive its root, so cap it there.
    end = min(end, ca_cert.not_valid_after_utc)
    if end <= start:
        raise CAError(f"the CA certificate expired at {end}; rotate the CA")
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    for address in ip_addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            raise CAError(
                f"{address!r} is not an IP address; put host names in dns_names"
            ) from None
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization))
        .issuer_name(ca_cert.subject)
        .public_key(subject_public)
        # 159 bits: positive, at most 20 octets (RFC 5280 §4.1.2.2).
        .serial_number(secrets.randbits(159) | 1)
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(_USAGES[usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    try:
        cert = builder.sign(ca_key, algorithm=None)
    except (ValueError, TypeError) as exc:
        raise CAError(f"cannot issue x509 certificate ({exc})") from None
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificate(pem_or_der: bytes) -> x509.Certificate:
    """Parse a PEM or DER certificate; raise :class:`CAError` on garbage."""
    try:
        if pem_or_der.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(pem_or_der)
        return x509.load_der_x509_certificate(pem_or_der)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CAError(f"cannot read x509 certificate ({exc})") from None


def split_pem_bundle(bundle: bytes) -> list[bytes]:
    """The PEM certificates of a bundle (several CA roots trusted at once, as during
    a CA rotation), each ending in a newline; a single PEM gives a one-item list."""
    marker = b"-----END CERTIFICATE-----"
    out = []
    for part in bundle.split(marker):
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            out.append(part[start:] + marker + b"\n")
    return out


def cert_common_name(pem_or_der: bytes) -> str:
    """Return the subject CommonName; raise :class:`CAError` if there is none."""
    return _attribute(load_certificate(pem_or_der), NameOID.COMMON_NAME, "CommonName")


def cert_organization(pem_or_der: bytes) -> str:
    """Return the subject Organization; raise :class:`CAError` if there is none."""
    return _attribute(load_certificate(pem_or_der), NameOID.ORGANIZATION_NAME, "Organization")


def cert_not_after(pem: bytes) -> datetime:
    """Return the expiry of a certificate as an aware UTC datetime."""
    return load_certificate(pem).not_valid_after_utc


def _attribute(cert: x509.Certificate, oid: x509.ObjectIdentifier, label: str) -> str:
    attrs = cert.subject.get_attributes_for_oid(oid)
    if not attrs:
        raise CAError(f"certificate subject has no {label}")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _name(common_name: str, organization: str | None) -> x509.Name:
    try:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    except ValueError as exc:
        raise CAError(f"invalid certificate name ({exc}); names are 1-64 characters") from None
    return x509.Name(attrs)


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC).replace(microsecond=0)
    if moment.tzinfo is None:
        raise CAError("datetimes must be timezone-aware (use datetime.now(UTC))")
    return moment.astimezone(UTC)


def signed_by(cert: x509.Certificate, issuer_key: object) -> bool:
    """True if ``issuer_key`` (an Ed25519 public key, as every Remoteler CA's) signed
    ``cert``. Any other key type is False."""
    if not isinstance(issuer_key, Ed25519PublicKey):
        return False
    try:
        issuer_key.verify(cert.signature, cert.tbs_certificate_bytes)
    except InvalidSignature:
        return False
    return True
