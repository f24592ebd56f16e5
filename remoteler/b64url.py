"""Base64url without padding (RFC 4648 section 5; JOSE, PKCE and our sealed SSO
answers all use it)."""

from __future__ import annotations

import base64


def encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decode(text: str) -> bytes:
    """The bytes of ``text``, padded or not; ValueError if it is not base64url."""
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
