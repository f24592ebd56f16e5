"""OpenSSH certificate encoder and parser (PROTOCOL.certkeys, "v01" certificates).

asyncssh verifies OpenSSH certificates but cannot write custom extensions such
as ``remoteler-roles@remoteler``, so the CA writes them itself. Layout of the
signed blob (PROTOCOL.certkeys, ssh-ed25519-cert-v01@openssh.com)::

    string  key type ("ssh-ed25519-cert-v01@openssh.com")
    string  nonce                 (32 random bytes)
    ...     subject public key    (type specific, see _KEY_TYPES)
    uint64  serial
    uint32  type                  (1 user, 2 host)
    string  key id
    string  valid principals      (packed strings)
    uint64  valid after
    uint64  valid before          (0xFFFFFFFFFFFFFFFF = forever)
    string  critical options      (name, string-wrapped data; sorted, unique)
    string  extensions            (name, string-wrapped data or empty for flags)
    string  reserved
    string  signature key         (the CA's "ssh-ed25519" public key blob)
    string  signature             (over every byte before it)

The CA key is always Ed25519; subject keys may be Ed25519, ECDSA (P-256,
P-384, P-521) or RSA.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from . import _wire
from .errors import CAError

__all__ = [
    "DEFAULT_USER_EXTENSIONS",
    "VALID_FOREVER",
    "CertSpec",
    "ParsedCert",
    "SubjectPublicKey",
    "certificate_to_openssh",
    "encode_certificate",
    "parse_certificate",
]

SubjectPublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

#: ``valid_before`` value meaning "never expires" (PROTOCOL.certkeys).
VALID_FOREVER: Final = _wire.UINT64_MAX

#: The extensions ``ssh-keygen`` puts in a user certificate by default.
DEFAULT_USER_EXTENSIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "permit-X11-forwarding": "",
        "permit-agent-forwarding": "",
        "permit-port-forwarding": "",
        "permit-pty": "",
        "permit-user-rc": "",
    }
)

_CERT_TYPES: Final = {"user": 1, "host": 2}
_CERT_TYPE_NAMES: Final[dict[int, Literal["user", "host"]]] = {1: "user", 2: "host"}
_ED25519: Final = "ssh-ed25519"
_ED25519_CERT: Final = "ssh-ed25519-cert-v01@openssh.com"
_RSA_CERT: Final = "ssh-rsa-cert-v01@openssh.com"
_CURVES: Final[dict[str, tuple[str, type[ec.EllipticCurve]]]] = {
    # curve name in cryptography -> (SSH curve identifier, curve class)
    "secp256r1": ("nistp256", ec.SECP256R1),
    "secp384r1": ("nistp384", ec.SECP384R1),
    "secp521r1": ("nistp521", ec.SECP521R1),
}
_SSH_CURVES: Final = {ssh_name: cls for ssh_name, cls in _CURVES.values()}
_NONCE_LEN: Final = 32


def _empty() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class CertSpec:
    """What to put in an OpenSSH certificate; validated on construction."""

    cert_type: Literal["user", "host"]
    """``"user"`` (type 1) or ``"host"`` (type 2)."""
    key_id: str
    """Free-form identity logged by sshd (the user name or node id)."""
    principals: tuple[str, ...]
    """Logins (user certs) or host names (host certs); empty means *any*."""
    valid_after: int
    """Unix seconds; the certificate is not valid before this."""
    valid_before: int
    """Unix seconds; :data:`VALID_FOREVER` for no expiry."""
    serial: int = 0
    """uint64 serial, for revocation lists."""
    critical_options: Mapping[str, str] = field(default_factory=_empty)
    """E.g. ``force-command``, ``source-address``; values are string-wrapped."""
    extensions: Mapping[str, str] = field(default_factory=_empty)
    """``""`` marks a flag extension; other values are string-wrapped."""

    def __post_init__(self) -> None:
        if self.cert_type not in _CERT_TYPES:
            raise CAError(f"cert_type must be 'user' or 'host', not {self.cert_type!r}")
        if isinstance(self.principals, str):
            raise CAError("principals must be a sequence of strings, not a single string")
        object.__setattr__(self, "principals", tuple(self.principals))
        for name, value in (
            ("serial", self.serial),
            ("valid_after", self.valid_after),
            ("valid_before", self.valid_before),
        ):
            if not 0 <= value <= _wire.UINT64_MAX:
                raise CAError(f"{name} must fit in an unsigned 64-bit integer, got {value}")
        if self.valid_after >= self.valid_before:
            raise CAError(
                f"valid_after ({self.valid_after}) must be before valid_before "
                f"({self.valid_before}); check the TTL"
            )
        for principal in self.principals:
            if not principal:
                raise CAError("principals must not contain an empty string")
        for table in (self.critical_options, self.extensions):
            for key in table:
                if not key:
                    raise CAError("critical option and extension names must not be empty")
        object.__setattr__(self, "critical_options", MappingProxyType(dict(self.critical_options)))
        object.__setattr__(self, "extensions", MappingProxyType(dict(self.extensions)))


@dataclass(frozen=True)
class ParsedCert:
    """An OpenSSH certificate as read by :func:`parse_certificate`."""

    key_type: str
    """E.g. ``"ssh-ed25519-cert-v01@openssh.com"``."""
    nonce: bytes = field(repr=False)
    """The CA's random nonce."""
    subject_public: SubjectPublicKey
    """The certified key."""
    serial: int
    """uint64 serial."""
    cert_type: Literal["user", "host"]
    """``"user"`` or ``"host"``."""
    key_id: str
    """Identity chosen by the CA."""
    principals: tuple[str, ...]
    """Allowed logins or host names; empty means any."""
    valid_after: int
    """Unix seconds."""
    valid_before: int
    """Unix seconds or :data:`VALID_FOREVER`."""
    critical_options: Mapping[str, str]
    """Unwrapped critical option values."""
    extensions: Mapping[str, str]
    """Unwrapped extension values; ``""`` for flags."""
    ca_public: Ed25519PublicKey
    """The signing CA's key; compare its pin before trusting the certificate."""
    signature_valid: bool
    """Whether the signature verifies under ``ca_public`` (says nothing about trust)."""
    blob: bytes = field(repr=False)
    """The raw certificate."""
    comment: str = ""
    """Comment from the one-line form, if parsed from a line."""

    @property
    def forever(self) -> bool:
        """True if the certificate never expires."""
        return self.valid_before == VALID_FOREVER

    def is_valid_at(self, now: int) -> bool:
        """True if ``now`` (unix seconds) is in ``[valid_after, valid_before)``.

        Does not check the signature or the CA: do both before trusting it.
        """
        return self.valid_after <= now < self.valid_before


def encode_certificate(
    spec: CertSpec, subject_public: SubjectPublicKey, ca_key: Ed25519PrivateKey
) -> bytes:
    """Sign ``subject_public`` per ``spec`` with ``ca_key``; return the raw certificate blob.

    Pass the result to :func:`certificate_to_openssh` to get the ``-cert.pub`` line.
    """
    if not isinstance(ca_key, Ed25519PrivateKey):
        raise CAError("the CA key must be an Ed25519 private key")
    cert_key_type, key_fields = _encode_subject(subject_public)
    body = b"".join(
        [
            _wire.string(cert_key_type),
            _wire.string(os.urandom(_NONCE_LEN)),
            key_fields,
            _wire.uint64(spec.serial),
            _wire.uint32(_CERT_TYPES[spec.cert_type]),
            _wire.string(spec.key_id),
            _wire.string(b"".join(_wire.string(p) for p in spec.principals)),
            _wire.uint64(spec.valid_after),
            _wire.uint64(spec.valid_before),
            _wire.string(_encode_options(spec.critical_options)),
            _wire.string(_encode_options(spec.extensions)),
            _wire.string(b""),  # reserved
            _wire.string(_ed25519_blob(ca_key.public_key())),
        ]
    )
    signature = _wire.string(_ED25519) + _wire.string(ca_key.sign(body))
    return body + _wire.string(signature)


def certificate_to_openssh(blob: bytes, comment: str = "") -> str:
    """Return the one-line form ``"<cert key type> AAAA... [comment]"`` of a blob."""
    key_type = _wire.Reader(blob, "OpenSSH certificate").text()
    if "\n" in comment or "\r" in comment:
        raise CAError("certificate comment must be a single line")
    line = f"{key_type} {base64.b64encode(blob).decode('ascii')}"
    return f"{line} {comment}" if comment else line


def parse_certificate(line_or_blob: str | bytes) -> ParsedCert:
    """Parse a certificate line (``str``, or ``bytes`` of a ``-cert.pub`` file) or raw blob.

    The signature is verified and reported in ``signature_valid``; the caller
    must still check ``ca_public`` against a trusted pin, the validity window and
    the principals. Raises :class:`CAError` on any malformed input.
    """
    comment = ""
    line_type: str | None = None
    if isinstance(line_or_blob, bytes) and not line_or_blob.startswith(b"\x00"):
        try:
            line_or_blob = line_or_blob.decode("ascii")
        except UnicodeDecodeError:
            raise CAError("not an OpenSSH certificate (neither a blob nor a text line)") from None
    if isinstance(line_or_blob, str):
        fields = line_or_blob.strip().split(maxsplit=2)
        if len(fields) < 2:
            raise CAError(
                "not an OpenSSH certificate line; expected '<type>-cert-v01@openssh.com AAAA...'"
            )
        line_type = fields[0]
        comment = fields[2] if len(fields) == 3 else ""
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except (binascii.Error, ValueError):
            raise CAError("certificate line does not contain valid base64") from None
    else:
        blob = bytes(line_or_blob)

    r = _wire.Reader(blob, "OpenSSH certificate")
    key_type = r.text()
    if line_type is not None and line_type != key_type:
        raise CAError(f"certificate line says {line_type!r} but the blob is {key_type!r}")
    nonce = r.string()
    subject_public = _decode_subject(key_type, r)
    serial = r.uint64()
    type_code = r.uint32()
    if type_code not in _CERT_TYPE_NAMES:
        raise CAError(f"unknown certificate type {type_code}; expected 1 (user) or 2 (host)")
    key_id = r.text()
    principals_r = _wire.Reader(r.string(), "certificate principals")
    principals: list[str] = []
    while not principals_r.at_end():
        principals.append(principals_r.text())
    valid_after = r.uint64()
    valid_before = r.uint64()
    critical_options = _decode_options(r.string(), "critical options")
    extensions = _decode_options(r.string(), "extensions")
    r.string()  # reserved, ignored per PROTOCOL.certkeys
    ca_public = _decode_ed25519_blob(r.string())
    signed_len = r.position
    sig_r = _wire.Reader(r.string(), "certificate signature")
    r.expect_end()
    sig_type = sig_r.text()
    sig = sig_r.string()
    sig_r.expect_end()
    signature_valid = False
    if sig_type == _ED25519:
        try:
            ca_public.verify(sig, blob[:signed_len])
            signature_valid = True
        except InvalidSignature:
            pass
    return ParsedCert(
        key_type=key_type,
        nonce=nonce,
        subject_public=subject_public,
        serial=serial,
        cert_type=_CERT_TYPE_NAMES[type_code],
        key_id=key_id,
        principals=tuple(principals),
        valid_after=valid_after,
        valid_before=valid_before,
        critical_options=critical_options,
        extensions=extensions,
        ca_public=ca_public,
        signature_valid=signature_valid,
        blob=blob,
        comment=comment,
    )


def _ed25519_blob(pub: Ed25519PublicKey) -> bytes:
    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _wire.string(_ED25519) + _wire.string(raw)


def _decode_ed25519_blob(data: bytes) -> Ed25519PublicKey:
    r = _wire.Reader(data, "certificate signature key")
    key_type = r.text()
    if key_type != _ED25519:
        raise CAError(f"certificate is signed by a {key_type!r} CA; only ssh-ed25519 is supported")
    raw = r.string()
    r.expect_end()
    return _ed25519_from_raw(raw)


def _ed25519_from_raw(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise CAError("malformed Ed25519 public key in certificate (length is not 32)")
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise CAError(f"malformed Ed25519 public key in certificate ({exc})") from None


def _encode_subject(pub: SubjectPublicKey) -> tuple[str, bytes]:
    """Return the certificate key type and the type-specific key fields."""
    if isinstance(pub, Ed25519PublicKey):
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return _ED25519_CERT, _wire.string(raw)
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if pub.curve.name not in _CURVES:
            raise CAError(f"ECDSA curve {pub.curve.name} is not supported; use P-256")
        ssh_curve = _CURVES[pub.curve.name][0]
        point = pub.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return (
            f"ecdsa-sha2-{ssh_curve}-cert-v01@openssh.com",
            _wire.string(ssh_curve) + _wire.string(point),
        )
    if isinstance(pub, rsa.RSAPublicKey):
        numbers = pub.public_numbers()
        return _RSA_CERT, _wire.mpint(numbers.e) + _wire.mpint(numbers.n)
    raise CAError(f"cannot certify a {type(pub).__name__}; use an Ed25519, ECDSA or RSA key")


def _decode_subject(key_type: str, r: _wire.Reader) -> SubjectPublicKey:
    try:
        if key_type == _ED25519_CERT:
            return _ed25519_from_raw(r.string())
        if key_type == _RSA_CERT:
            e = r.mpint()
            n = r.mpint()
            return rsa.RSAPublicNumbers(e, n).public_key()
        for ssh_curve, curve_cls in _SSH_CURVES.items():
            if key_type == f"ecdsa-sha2-{ssh_curve}-cert-v01@openssh.com":
                if r.text() != ssh_curve:
                    raise CAError("ECDSA certificate curve does not match its key type")
                return ec.EllipticCurvePublicKey.from_encoded_point(curve_cls(), r.string())
    except ValueError as exc:
        raise CAError(f"malformed subject public key in certificate ({exc})") from None
    raise CAError(f"unsupported certificate key type {key_type!r}")


def _encode_options(options: Mapping[str, str]) -> bytes:
    """Encode critical options or extensions, sorted by name (PROTOCOL.certkeys)."""
    encoded = sorted((name.encode("utf-8"), value) for name, value in options.items())
    out = []
    for name, value in encoded:
        data = _wire.string(value) if value else b""
        out.append(_wire.string(name) + _wire.string(data))
    return b"".join(out)


def _decode_options(data: bytes, what: str) -> Mapping[str, str]:
    r = _wire.Reader(data, f"certificate {what}")
    result: dict[str, str] = {}
    previous: bytes | None = None
    while not r.at_end():
        raw_name = r.string()
        value_data = r.string()
        if previous is not None and raw_name <= previous:
            raise CAError(f"certificate {what} are not sorted and unique (PROTOCOL.certkeys)")
        previous = raw_name
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise CAError(f"certificate {what} name is not UTF-8") from None
        if value_data:
            value_r = _wire.Reader(value_data, f"certificate {what} value")
            result[name] = value_r.text()
            value_r.expect_end()
        else:
            result[name] = ""
    return MappingProxyType(result)
