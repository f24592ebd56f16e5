"""TOTP seeds at rest, encrypted with the CA passphrase (docs/security.md).

The hub must keep each user's TOTP seed to check codes, so a copy of ``hub.db``
(a backup, a stolen disk) would let anyone who also has the password make codes.
With a CA passphrase the seed is stored as ``enc1:<salt>:<nonce+ciphertext>``
(base64): AES-256-GCM under a key derived from the passphrase with scrypt (the
CA keys' parameters, 16 MiB), the user name as associated data, so a seed moved
to another user's row does not decrypt. The key is derived once per salt and
kept in memory. Every writer (the hub, tctl) reuses the salt already in the
database, so all seeds share one key: scrypt costs ~0.1-0.3 s of CPU, and the
hub derives the keys at start (hub/auth/totp_seeds.py, in a thread), never during a login.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from remoteler.errors import ConfigError

PREFIX = "enc1:"
_AAD = b"remoteler-totp-seed:"


def is_encrypted(stored: str) -> bool:
    return stored.startswith(PREFIX)


def salt_of(stored: str) -> bytes | None:
    """The scrypt salt of an encrypted seed; None for plain text or a malformed value."""
    if not is_encrypted(stored):
        return None
    try:
        return base64.b64decode(stored[len(PREFIX) :].split(":", 1)[0], validate=True)
    except (ValueError, binascii.Error):
        return None


class SeedCipher:
    def __init__(self, passphrase: bytes) -> None:
        self._passphrase = passphrase
        self._keys: dict[bytes, bytes] = {}
        self._salt: bytes | None = None

    def __repr__(self) -> str:
        return "SeedCipher(<passphrase>)"

    def use_salt(self, salt: bytes) -> None:
        """Write with ``salt`` (one already in the database) rather than a new one."""
        if self._salt is None:
            self._salt = salt

    def write_salt(self) -> bytes:
        if self._salt is None:
            self._salt = secrets.token_bytes(16)
        return self._salt

    def has_key(self, salt: bytes) -> bool:
        return salt in self._keys

    def derive(self, salt: bytes) -> None:
        """Derive and keep the key for ``salt`` (scrypt: CPU-heavy, run it in a thread)."""
        self._key(salt)

    def _key(self, salt: bytes) -> bytes:
        key = self._keys.get(salt)
        if key is None:
            from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

            from hub.auth import secrets as hs  # the CA keys' scrypt cost

            kdf = Scrypt(salt=salt, length=32, n=hs.SCRYPT_N, r=hs.SCRYPT_R, p=hs.SCRYPT_P)
            key = self._keys[salt] = kdf.derive(self._passphrase)
        return key

    def encrypt(self, seed: str, user: str) -> str:
        """``seed`` (base32 text) as stored; an already encrypted value is returned as is."""
        if is_encrypted(seed):
            return seed
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        salt = self.write_salt()
        nonce = secrets.token_bytes(12)  # random 96 bits: one key seals few seeds
        sealed = AESGCM(self._key(salt)).encrypt(nonce, seed.encode(), _AAD + user.encode())
        return PREFIX + _b64(salt) + ":" + _b64(nonce + sealed)

    def decrypt(self, stored: str, user: str) -> str:
        """The seed in ``stored``; plain text (not yet migrated) is returned as is."""
        if not is_encrypted(stored):
            return stored
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            salt_text, sealed_text = stored[len(PREFIX) :].split(":", 1)
            salt, sealed = base64.b64decode(salt_text), base64.b64decode(sealed_text)
            plain = AESGCM(self._key(salt)).decrypt(sealed[:12], sealed[12:], _AAD + user.encode())
        except (ValueError, InvalidTag):
            raise ConfigError(
                f"cannot decrypt the TOTP seed of user {user!r}: wrong CA passphrase, or the "
                "row was altered; check --ca-passphrase-file, or reset the user's TOTP by "
                "removing and re-adding the user"
            ) from None
        return plain.decode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
