"""A CA as storage keeps it (:class:`~hub.storage.api.StoredCA`) <-> a :class:`CertAuthority`.

Storage holds the key as opaque bytes: an OpenSSH private key, or, when the hub has a
CA passphrase, the PKCS#8 ``ENCRYPTED PRIVATE KEY`` of hub/auth/secrets.py (scrypt +
AES-256-CBC, readable by ``openssl pkey``). This module is the only place that turns
one into the other, so no engine ever sees a plain key it was not handed.
"""

from __future__ import annotations

from hub.auth import secrets as hs
from hub.storage.api import CASlot, StoredCA
from remoteler.ca import CAError, CertAuthority, private_key_from_openssh, public_key_from_openssh
from remoteler.ca import x509 as ca_x509
from remoteler.ca.keys import private_key_to_openssh
from remoteler.errors import ConfigError

__all__ = ["encrypt_stored", "to_authority", "to_stored"]


def to_stored(ca: CertAuthority, slot: CASlot, passphrase: bytes | None) -> StoredCA:
    """``ca`` as storage keeps it in ``slot``: its key encrypted when ``passphrase`` is set."""
    if passphrase is None:
        key = private_key_to_openssh(ca.private_key)
    else:
        key = hs.encrypt_private_key(ca.private_key, passphrase)
    return StoredCA(ca.kind, slot, key, ca.ssh_public_line(), ca.x509_pem)


def to_authority(stored: StoredCA, cluster: str, passphrase: bytes | None) -> CertAuthority:
    """The usable CA; :class:`ConfigError` (one line) for a missing or wrong passphrase or
    key material that does not belong together. ``cluster`` is used where the
    certificate does not name one."""
    where = f"the {stored.kind} CA ({stored.slot})"
    try:
        if hs.is_encrypted_key(stored.private_key):
            if passphrase is None:
                raise ConfigError(
                    f"{where} key is encrypted: give its passphrase with --ca-passphrase-file "
                    f"FILE or ${hs.PASSPHRASE_FILE_ENV} or ${hs.PASSPHRASE_ENV}"
                )
            try:
                key = hs.decrypt_private_key(stored.private_key, passphrase)
            except (ValueError, TypeError):
                raise ConfigError(
                    f"wrong CA passphrase for {where}: check --ca-passphrase-file "
                    f"or ${hs.PASSPHRASE_ENV}"
                ) from None
        else:
            key = private_key_from_openssh(stored.private_key)
        organization = ca_x509.cert_organization(stored.x509_pem) or cluster
        ca = CertAuthority(stored.kind, organization, key, stored.x509_pem)
        if stored.ssh_public and public_key_from_openssh(stored.ssh_public) != ca.public_key:
            raise ConfigError(f"{where}: its public key does not match its private key")
    except CAError as exc:
        raise ConfigError(f"cannot load {where}: {exc}") from None
    return ca


def encrypt_stored(stored: StoredCA, passphrase: bytes) -> StoredCA | None:
    """A plain stored key encrypted with ``passphrase`` (None: it already is)."""
    if hs.is_encrypted_key(stored.private_key):
        return None
    key = private_key_from_openssh(stored.private_key)
    return StoredCA(
        stored.kind,
        stored.slot,
        hs.encrypt_private_key(key, passphrase),
        stored.ssh_public,
        stored.x509_pem,
    )
