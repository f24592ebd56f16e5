"""Remoteler's certificate authorities: OpenSSH certificates and x509 mTLS roots.

See ``docs/certificates.md`` for what each CA signs and the on-disk layout.
"""

from .authority import DEFAULT_USER_CERT_TTL, SSH_CLOCK_SKEW, CAKind, CertAuthority
from .errors import CAError
from .keys import (
    check_secret_file_mode,
    generate_private_key,
    pin_of_cert_pem,
    private_key_from_openssh,
    private_key_to_openssh,
    private_key_to_pkcs8_pem,
    public_key_from_openssh,
    public_key_to_openssh,
    spki_pin,
    write_file_atomic,
    write_secret_file,
)
from .sshcert import (
    DEFAULT_USER_EXTENSIONS,
    VALID_FOREVER,
    CertSpec,
    ParsedCert,
    SubjectPublicKey,
    certificate_to_openssh,
    encode_certificate,
    parse_certificate,
)
from .x509 import (
    cert_common_name,
    cert_not_after,
    cert_organization,
    issue_cert,
    load_certificate,
    make_root,
    signed_by,
    split_pem_bundle,
)

__all__ = [
    "DEFAULT_USER_CERT_TTL",
    "DEFAULT_USER_EXTENSIONS",
    "SSH_CLOCK_SKEW",
    "VALID_FOREVER",
    "CAError",
    "CAKind",
    "CertAuthority",
    "CertSpec",
    "ParsedCert",
    "SubjectPublicKey",
    "cert_common_name",
    "cert_not_after",
    "cert_organization",
    "certificate_to_openssh",
    "check_secret_file_mode",
    "encode_certificate",
    "generate_private_key",
    "issue_cert",
    "load_certificate",
    "make_root",
    "parse_certificate",
    "pin_of_cert_pem",
    "private_key_from_openssh",
    "private_key_to_openssh",
    "private_key_to_pkcs8_pem",
    "public_key_from_openssh",
    "public_key_to_openssh",
    "signed_by",
    "spki_pin",
    "split_pem_bundle",
    "write_file_atomic",
    "write_secret_file",
]
