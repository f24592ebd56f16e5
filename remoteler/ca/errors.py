"""Errors raised by the certificate authority module.

There is one class, :class:`CAError`. It covers both local misuse (signing a
user certificate with the host CA, a key file readable by others) and input
that does not parse (a truncated certificate, garbage where a public key was
expected). Its message always says what the caller or operator should do next.
"""

from __future__ import annotations

__all__ = ["CAError"]


class CAError(Exception):
    """A certificate authority operation failed; the message says how to fix it."""
