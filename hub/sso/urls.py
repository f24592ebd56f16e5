"""Identity provider URLs: https, except http on loopback (the tests' providers)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from remoteler.errors import UsageError


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(value: object, key: str) -> str:
    """``value`` if it is an https URL with a host (http only on loopback); else a
    one-line UsageError naming ``key``."""
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{key} must be a URL such as https://idp.example.com")
    try:
        parts = urlsplit(value)
        host = parts.hostname
    except ValueError:
        raise UsageError(f"{key} is not a URL: {value[:100]!r}") from None
    if parts.scheme == "https" and host:
        return value
    if parts.scheme == "http" and is_loopback(host):
        return value
    raise UsageError(
        f"{key} must use https:// (http:// only on loopback, for tests): {value[:100]!r}"
    )
