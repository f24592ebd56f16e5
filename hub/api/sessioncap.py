"""Per-user session accounting at the hub (role option ``max_sessions``), and the
role-driven end of a relayed session at certificate expiry (``disconnect_expired_cert``).

Every ``/v1/connect`` websocket (``tsh ssh``, ``tsh scp``, ``tsh proxy ssh``, a
recording-proxy session) holds one slot of its user's count from the access
check to the moment its TCP connection is gone; a slot is released once,
whichever way the connection ends. The count is per hub process: each hub of a
cluster counts the sessions it serves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from cryptography import x509

from remoteler.access import Role
from remoteler.ca.x509 import CLOCK_SKEW
from remoteler.errors import AccessDenied
from remoteler.roleopts import SessionLimit, disconnect_expired_cert


class TooManySessions(AccessDenied):
    """The user already holds as many sessions as their roles allow (HTTP 429)."""


class SessionCounter:
    """Open sessions per user, sans I/O: :meth:`acquire` hands out a release callable."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def count(self, user: str) -> int:
        return self._open.get(user, 0)

    def acquire(self, user: str, limit: SessionLimit) -> Callable[[], None]:
        """Take a slot for ``user``, or raise :class:`TooManySessions` with the refusal.

        Call the returned function when the session is over; calling it again is harmless.
        """
        held = self._open.get(user, 0)
        if held >= limit.limit:
            raise TooManySessions(limit.refusal(user))
        self._open[user] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self._open.get(user, 0) - 1
            if left > 0:
                self._open[user] = left
            else:
                self._open.pop(user, None)

        return release


def relay_deadline(transport: object, roles: Iterable[Role]) -> float | None:
    """When the hub ends a relayed session: the user's x509 certificate's expiry if
    the roles ask for it (``disconnect_expired_cert``), else None.

    The x509 certificate is issued with the SSH one (same TTL, started
    :data:`CLOCK_SKEW` early), so its lifetime tells the TTL the roles judged.
    """
    get = getattr(transport, "get_extra_info", None)
    ssl_object = get("ssl_object") if get is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    start: datetime = cert.not_valid_before_utc + CLOCK_SKEW
    end: datetime = cert.not_valid_after_utc
    ttl = (end - start).total_seconds()
    return end.timestamp() if disconnect_expired_cert(roles, ttl) else None
