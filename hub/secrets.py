"""Verifiers for the hub's secrets: Argon2id passwords, TOTP codes, hashed tokens.

Nothing here logs; callers must never log the inputs either.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor

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
