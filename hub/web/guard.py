"""Headers every web response carries, and the checks on every request (docs/web.md).

- A Content-Security-Policy with a fresh nonce per page and no ``unsafe-inline``:
  scripts and styles from the hub only; the page's own modules give the nonce to
  the ``<style>`` elements xterm.js makes.
- No framing, no sniffing, no referrer, HSTS.
- A state change (any method but GET/HEAD) needs the session's CSRF token in
  ``X-CSRF-Token`` and, when the browser sends ``Origin``, the hub's own origin.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

SAFE_METHODS = frozenset({"GET", "HEAD"})


def new_nonce() -> str:
    return secrets.token_urlsafe(18)


def csp(nonce: str | None = None) -> str:
    style = "'self'" + (f" 'nonce-{nonce}'" if nonce else "")
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            f"style-src {style}",
            "img-src 'self' data:",
            "font-src 'self'",
            "connect-src 'self'",
            "manifest-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers(nonce: str | None = None) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp(nonce),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Strict-Transport-Security": "max-age=31536000",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    }


def same_origin(headers: Mapping[str, str], host: str | None) -> bool:
    """True unless the browser says the request comes from another origin."""
    origin = headers.get("Origin")
    if origin is None:
        return headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")
    return bool(host) and origin == f"https://{host}"
