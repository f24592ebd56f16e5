"""The certificates of an SSO login, sealed for the ``tsh`` that asked for them.

``tsh login --auth`` makes a random 256-bit key and sends it to the hub with the login
request over its pinned TLS connection. When the identity provider has vouched for
the user, the hub redirects the browser to tsh's loopback listener with the result
sealed under that key (AES-256-GCM, the request id as associated data): the
certificates pass through the browser and its history only encrypted.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from remoteler import b64url
from remoteler.errors import AuthError

KEY_BYTES = 32


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def encode_key(key: bytes) -> str:
    return b64url.encode(key)


def decode_key(text: str) -> bytes:
    try:
        key = b64url.decode(text)
    except (ValueError, TypeError):
        key = b""
    if len(key) != KEY_BYTES:
        raise ValueError("the client key must be 32 bytes, base64url")
    return key


def seal(key: bytes, request_id: str, payload: dict[str, Any]) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(12)
    box = AESGCM(key).encrypt(nonce, json.dumps(payload).encode(), request_id.encode())
    return b64url.encode(nonce + box)


def unseal(key: bytes, request_id: str, text: str) -> dict[str, Any]:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    try:
        raw = b64url.decode(text)
        plain = AESGCM(key).decrypt(raw[:12], raw[12:], request_id.encode())
        payload = json.loads(plain)
    except (ValueError, TypeError, InvalidTag):
        raise AuthError(
            "the login's answer did not decrypt: it was not for this tsh; run 'tsh login' again"
        ) from None
    if not isinstance(payload, dict):
        raise AuthError("the login's answer is malformed; run 'tsh login' again")
    return payload
