"""Web sessions: who a browser is, for how long, and its CSRF token (sans-I/O).

A session is made by a password + TOTP login and holds a key pair and the user's
certificates issued for this session only (the web terminal dials the device with
them, as ``tsh`` would). It ends when idle for ``idle_timeout`` (default 30 min),
when its certificate expires, at logout, or when the user is locked or removed.
The browser holds only the session id, in an HttpOnly, Secure, SameSite=Strict
cookie; state-changing requests must also carry the session's CSRF token.

Caps: :data:`MAX_SESSIONS` in all (the least recently used goes) and
:data:`MAX_PER_USER` per user (that user's oldest goes). Sessions live in the hub
process that made them (docs/web.md).
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from remoteler.identity import UserIdentity

COOKIE = "__Host-remoteler-session"
CSRF_HEADER = "X-CSRF-Token"
DEFAULT_IDLE = 30 * 60.0
MAX_SESSIONS = 10_000
MAX_PER_USER = 32


@dataclass
class WebSession:
    id: str
    user: str
    csrf: str
    identity: UserIdentity
    expires: float
    remote_addr: str
    created: float
    last_seen: float
    #: open terminals and event streams end with the session (logout, lock, expiry)
    closers: list[Callable[[str], None]] = field(default_factory=list)

    def end(self, reason: str) -> None:
        closers, self.closers = self.closers, []
        for close in closers:
            close(reason)


class WebSessions:
    def __init__(
        self,
        idle_timeout: float = DEFAULT_IDLE,
        *,
        clock: Callable[[], float] = time.time,
        max_sessions: int = MAX_SESSIONS,
        max_per_user: int = MAX_PER_USER,
    ) -> None:
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.max_sessions = max_sessions
        self.max_per_user = max_per_user
        self._by_id: OrderedDict[str, WebSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_id)

    def create(
        self, user: str, identity: UserIdentity, expires: float, remote_addr: str
    ) -> WebSession:
        now = self.clock()
        mine = [s for s in self._by_id.values() if s.user == user]
        for old in mine[: max(0, len(mine) - self.max_per_user + 1)]:
            self.drop(old.id, "too many web sessions for this user: the oldest ended")
        while len(self._by_id) >= self.max_sessions:
            oldest = next(iter(self._by_id))
            self.drop(oldest, "the hub holds too many web sessions: the least recent ended")
        session = WebSession(
            id=secrets.token_urlsafe(32),
            user=user,
            csrf=secrets.token_urlsafe(32),
            identity=identity,
            expires=expires,
            remote_addr=remote_addr,
            created=now,
            last_seen=now,
        )
        self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None, *, touch: bool = True) -> WebSession | None:
        """The live session for a cookie's id; None (and the session ended) if it has
        expired or been idle too long. ``touch``: this request counts as activity."""
        if not session_id or len(session_id) > 64:
            return None
        session = self._by_id.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if now >= session.expires:
            self.drop(session.id, "your certificate expired: log in again")
            return None
        if now - session.last_seen >= self.idle_timeout:
            self.drop(session.id, "the web session was idle too long: log in again")
            return None
        if touch:
            session.last_seen = now
            self._by_id.move_to_end(session.id)
        return session

    def drop(self, session_id: str, reason: str) -> None:
        session = self._by_id.pop(session_id, None)
        if session is not None:
            session.end(reason)

    def drop_user(self, user: str, reason: str) -> int:
        ids = [s.id for s in self._by_id.values() if s.user == user]
        for sid in ids:
            self.drop(sid, reason)
        return len(ids)

    def sweep(self) -> int:
        """End expired and idle sessions; how many ended."""
        now = self.clock()
        gone = [
            s.id
            for s in self._by_id.values()
            if now >= s.expires or now - s.last_seen >= self.idle_timeout
        ]
        for sid in gone:
            self.drop(sid, "the web session expired: log in again")
        return len(gone)

    def users(self) -> set[str]:
        return {s.user for s in self._by_id.values()}


def csrf_ok(session: WebSession, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(session.csrf.encode(), (sent or "").encode())
