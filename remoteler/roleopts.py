"""Role options that bound sessions: ``max_sessions`` and ``disconnect_expired_cert``.

Pure functions over :class:`~remoteler.access.Role` values, shared by the hub
(counting sessions, issuing certificates) and the device (reading the flag out
of a certificate). As Teleport's ``max_connections`` and
``disconnect_expired_cert``, the most restrictive role of the user wins.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from remoteler.access import Role

#: Concurrent ``/v1/connect`` sessions per user per hub when no role says less.
DEFAULT_MAX_SESSIONS = 32
#: Largest ``max_sessions`` a role may set.
MAX_MAX_SESSIONS = 10_000
#: A certificate shorter than this (seconds) ends its sessions at expiry unless
#: every role of the user says ``disconnect_expired_cert = false``.
DISCONNECT_BELOW_TTL = 3600
#: Flag extension (empty value) of a user certificate whose sessions end when it
#: expires (PROTOCOL.certkeys: unknown extensions are ignored by OpenSSH's sshd).
DISCONNECT_EXTENSION = "remoteler-disconnect-expired-cert@remoteler"
#: Audit reason of a session ended at certificate expiry (``session.end``).
EXPIRED_REASON = "certificate expired"
#: Session channels one SSH connection may have open at once, on the device's
#: embedded server and in the hub's recording proxy, as OpenSSH's ``MaxSessions``
#: (default 10): ``max_sessions`` counts connections, and each multiplexes channels.
SESSIONS_PER_CONNECTION = 10
#: Why the next session channel on a connection was refused.
SESSIONS_PER_CONNECTION_REFUSAL = (
    f"too many sessions on this connection ({SESSIONS_PER_CONNECTION}, as OpenSSH's "
    "MaxSessions); close one first"
)


@dataclass(frozen=True)
class SessionLimit:
    """How many sessions a user may hold open at once, and which role says so."""

    limit: int
    """Concurrent sessions allowed."""
    role: str | None
    """The role that set the smallest limit; None when it is the default."""

    def refusal(self, user: str) -> str:
        """The one line ``tsh`` shows when the limit is reached."""
        source = f"role {self.role}" if self.role else "the default"
        return (
            f"too many open sessions for {user} ({self.limit}, {source}); close one or ask an admin"
        )


DEFAULT_LIMIT = SessionLimit(DEFAULT_MAX_SESSIONS, None)


def session_limit(roles: Iterable[Role]) -> SessionLimit:
    """The smallest ``max_sessions`` among ``roles``; a role that does not set it
    counts as :data:`DEFAULT_MAX_SESSIONS` (as ``max_session_ttl``: raising it
    needs every role of the user to allow more)."""
    found = [
        SessionLimit(r.max_sessions, r.name)
        if r.max_sessions is not None
        else SessionLimit(DEFAULT_MAX_SESSIONS, None)
        for r in roles
    ]
    # the smallest; on a tie, a role that says it rather than the default
    return min(found, key=lambda x: (x.limit, x.role is None), default=DEFAULT_LIMIT)


def disconnect_expired_cert(roles: Iterable[Role], ttl: float) -> bool:
    """Whether sessions of a certificate lasting ``ttl`` seconds end at its expiry.

    Each role says ``true`` or ``false``, or by default whether ``ttl`` is under
    :data:`DISCONNECT_BELOW_TTL`; the sessions end when any role says so (a user
    without roles gets the default).
    """
    default = ttl < DISCONNECT_BELOW_TTL
    says = [r.disconnect_expired_cert for r in roles]
    return any(default if x is None else x for x in says) if says else default


def ends_at_expiry(extensions: Mapping[str, str]) -> bool:
    """Whether a certificate with ``extensions`` carries :data:`DISCONNECT_EXTENSION`."""
    return DISCONNECT_EXTENSION in extensions


def expiry_message(valid_before: float) -> str:
    """What the user reads on stderr when the session is ended at expiry."""
    at = time.strftime("%H:%M:%S", time.gmtime(valid_before))
    return f"your certificate expired at {at} UTC; session ended (run 'tsh login' for a new one)"
