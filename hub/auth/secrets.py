"""Verifiers for the hub's secrets: Argon2id passwords, TOTP codes, hashed tokens.

Nothing here logs; callers must never log the inputs either.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOTP_PERIOD = 30
TOTP_DIGITS = 6
MIN_PASSWORD = 8

_hasher = PasswordHasher()  # Argon2id, 64 MiB, t=3: memory-hard (RFC 9106 second choice)
# Verifying against this keeps unknown-user logins as slow as real ones.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))
# One Argon2 run takes ~0.2 s of CPU: run it off the event loop so logins cannot
# stall tunnels, and at most two at a time so a login flood costs 2 x 64 MiB.
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="argon2")


def set_hash_threads(count: int) -> None:
    """Run up to ``count`` password hashes at once (``hub start --max-password-hashes``):
    the pool must be as wide as the hub-wide cap (hub/auth/hashgate.py), or hashes let in by
    the cap wait in the pool's queue, where no deadline applies."""
    global _POOL
    old, _POOL = _POOL, ThreadPoolExecutor(max_workers=max(1, count), thread_name_prefix="argon2")
    old.shutdown(wait=False)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


async def hash_password_async(password: str) -> str:
    """:func:`hash_password` in the Argon2 worker pool; the event loop keeps running."""
    return await asyncio.get_running_loop().run_in_executor(_POOL, hash_password, password)


async def verify_password_async(stored: str | None, password: str) -> bool:
    """:func:`verify_password` in the Argon2 worker pool; the event loop keeps running."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_POOL, verify_password, stored, password)


def new_totp_secret() -> str:
    import pyotp

    return pyotp.random_base32()


def totp_uri(secret: str, user: str, issuer: str) -> str:
    import pyotp

    return pyotp.TOTP(secret).provisioning_uri(name=user, issuer_name=issuer)


def totp_step(secret: str, code: str, now: float) -> int | None:
    """The time step ``code`` belongs to (now, or one step either side), else None.

    The caller records the step and refuses any step not newer than the last
    one, so a code is never accepted twice (RFC 6238 section 5.2).
    """
    import pyotp

    code = code.strip()
    if len(code) != TOTP_DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret)
    current = int(now // TOTP_PERIOD)
    found = None
    for step in (current - 1, current, current + 1):
        if hmac.compare_digest(totp.at(step * TOTP_PERIOD), code):
            found = step
    return found


def new_token() -> str:
    return secrets.token_hex(16)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


# -- CA keys at rest (hub/datadir.py) ------------------------------------------------

#: Environment variables tctl and the hub read the CA passphrase from.
PASSPHRASE_ENV = "REMOTELER_CA_PASSPHRASE"  # noqa: S105 - a variable's name
PASSPHRASE_FILE_ENV = "REMOTELER_CA_PASSPHRASE_FILE"  # noqa: S105
#: scrypt cost for the CA keys: 2^14 x 8 x 128 B = 16 MiB per try (RFC 7914), the most
#: OpenSSL accepts by default, so `openssl pkey -in FILE` can still read them.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1

# DER, by hand: the structure is fixed (RFC 5958 EncryptedPrivateKeyInfo, RFC 8018
# PBES2, RFC 7914 section 7 scrypt parameters) and cryptography only writes PBKDF2.
_OID_PBES2 = bytes.fromhex("06092a864886f70d01050d")  # 1.2.840.113549.1.5.13
_OID_SCRYPT = bytes.fromhex("06092b06010401da47040b")  # 1.3.6.1.4.1.11591.4.11
_OID_AES256_CBC = bytes.fromhex("060960864801650304012a")  # 2.16.840.1.101.3.4.1.42


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def _der_int(value: int) -> bytes:
    return _der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def encrypt_private_key(key: Any, passphrase: bytes) -> bytes:
    """``key`` as an ``ENCRYPTED PRIVATE KEY`` PEM: PKCS#8, PBES2 with scrypt and AES-256-CBC.

    OpenSSL reads it (``openssl pkey -in FILE``); :func:`decrypt_private_key` too.
    """
    import base64

    from cryptography.hazmat.primitives import padding, serialization
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    plain = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt, iv = secrets.token_bytes(16), secrets.token_bytes(16)
    kek = Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(passphrase)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(kek), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    scrypt_params = _der(
        0x30,
        _der(0x04, salt) + _der_int(SCRYPT_N) + _der_int(SCRYPT_R) + _der_int(SCRYPT_P),
    )
    pbes2 = _der(
        0x30,
        _der(0x30, _OID_SCRYPT + scrypt_params) + _der(0x30, _OID_AES256_CBC + _der(0x04, iv)),
    )
    info = _der(0x30, _der(0x30, _OID_PBES2 + pbes2) + _der(0x04, ciphertext))
    b64 = base64.encodebytes(info).replace(b"\n", b"")
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    return (
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n"
        + b"\n".join(lines)
        + b"\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )


def is_encrypted_key(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


def decrypt_private_key(data: bytes, passphrase: bytes) -> Any:
    """The key in an ``ENCRYPTED PRIVATE KEY`` PEM; ValueError if the passphrase is wrong."""
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(data, passphrase)


def read_passphrase(path: str | None) -> bytes | None:
    """The CA passphrase: from ``path``, else ``$REMOTELER_CA_PASSPHRASE_FILE``, else
    ``$REMOTELER_CA_PASSPHRASE``; None if none is set. A file must be 0600 (or stricter)
    and may end with one newline, which is not part of the passphrase."""
    import os
    from pathlib import Path

    from remoteler.ca import CAError, check_secret_file_mode
    from remoteler.errors import ConfigError

    path = path or os.environ.get(PASSPHRASE_FILE_ENV) or None
    if path is not None:
        try:
            check_secret_file_mode(Path(path))
            data = Path(path).read_bytes()
        except CAError as exc:
            raise ConfigError(f"CA passphrase file: {exc}") from None
        except OSError as exc:
            raise ConfigError(
                f"cannot read the CA passphrase file {path}: {exc.strerror}"
            ) from None
        data = data[:-1] if data.endswith(b"\n") else data
    else:
        text = os.environ.get(PASSPHRASE_ENV)
        if text is None:
            return None
        data = text.encode()
    if not data:
        raise ConfigError("the CA passphrase is empty; put at least 12 characters in it")
    return data
