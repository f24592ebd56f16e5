"""TOTP seeds at rest, encrypted with the CA passphrase (docs/security.md).

The hub must keep each user's TOTP seed to check codes, so a copy of ``hub.db``
(a backup, a stolen disk) would let anyone who also has the password make codes.
With a CA passphrase the seed is stored as ``enc1:<salt>:<nonce+ciphertext>``
(base64): AES-256-GCM under a key derived from the passphrase with scrypt (the
CA keys' parameters, 16 MiB), the user name as associated data, so a seed moved
to another user's row does not decrypt. The key is derived once per salt and
kept in memory; a process writes every seed with one salt of its own.
"""

from __future__ import annotations

import base64
import secrets

from remoteler.errors import ConfigError

PREFIX = "enc1:"
_AAD = b"remoteler-totp-seed:"


def is_encrypted(stored: str) -> bool:
    return stored.startswith(PREFIX)


class SeedCipher:
    def __init__(self, passphrase: bytes) -> None:
        self._passphrase = passphrase
        self._keys: dict[bytes, bytes] = {}
        self._salt: bytes | None = None

    def __repr__(self) -> str:
        return "SeedCipher(<passphrase>)"

    def _key(self, salt: bytes) -> bytes:
        key = self._keys.get(salt)
        if key is None:
            from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

            from hub import secrets as hs  # the CA keys' scrypt cost

            kdf = Scrypt(salt=salt, length=32, n=hs.SCRYPT_N, r=hs.SCRYPT_R, p=hs.SCRYPT_P)
            key = self._keys[salt] = kdf.derive(self._passphrase)
        return key

    def encrypt(self, seed: str, user: str) -> str:
        """``seed`` (base32 text) as stored; an already encrypted value is returned as is."""
        if is_encrypted(seed):
            return seed
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if self._salt is None:
            self._salt = secrets.token_bytes(16)
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self._key(self._salt)).encrypt(nonce, seed.encode(), _AAD + user.encode())
        return PREFIX + _b64(self._salt) + ":" + _b64(nonce + sealed)

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
