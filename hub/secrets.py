"""Verifiers for the hub's secrets: Argon2id passwords, TOTP codes, hashed tokens.

Nothing here logs; callers must never log the inputs either.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

TOTP_PERIOD = 30
TOTP_DIGITS = 6
MIN_PASSWORD = 8

_hasher = PasswordHasher()  # Argon2id, 64 MiB, t=3: memory-hard (RFC 9106 second choice)
# Verifying against this keeps unknown-user logins as slow as real ones.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


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
