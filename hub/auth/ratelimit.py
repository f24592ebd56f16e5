"""Login protection: per-address rate limits and lockouts, per-user lockouts.

Defaults follow Teleport (5 failed logins lock the account for a while) and
are written down in docs/security.md. A user name is locked out the same way
whether or not it exists, so the answers never tell an attacker which names
are real. User lockouts are stored in the storage and survive a restart;
address state is in memory (an address is cheap to change, a user is not).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hub.net.admission import source_key
from hub.storage.api import GuardPolicy, Storage
from remoteler.errors import AuthError

#: Names that can be users (hub.auth.service.check_name); others are never stored.
_USER_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,62}", re.IGNORECASE)
#: An attempt still counted as in flight after this many seconds is forgotten
#: (an attempt that ended without failed()/succeeded(), e.g. an internal error).
IN_FLIGHT_TTL = 30.0


@dataclass(frozen=True)
class LoginPolicy:
    max_user_failures: int = 5
    """Failed logins for one user name within ``failure_window`` before it is locked."""
    failure_window: float = 30 * 60
    user_lockout: float = 20 * 60
    """Seconds a user name stays locked after too many failures."""
    address_burst: int = 10
    """Login attempts one address may make at once (token bucket size)."""
    address_refill: float = 6.0
    """Seconds per new attempt after the burst: 10 a minute."""
    max_address_failures: int = 20
    """Failed logins from one address within ``failure_window`` before it is locked."""
    address_lockout: float = 15 * 60
    max_tracked_addresses: int = 50_000
    trusted_address_ttl: float = 24 * 3600
    """Seconds an address where a login succeeded keeps the password-hash priority lane."""
    max_trusted_addresses: int = 10_000
    prune_interval: float = 60.0
    """Seconds between deletions of user rows whose window passed and that are not locked."""
    prune_batch: int = 1000
    """Most rows one pruning deletes (one short transaction)."""


class LoginRefused(AuthError):
    """Refused before the credentials were looked at; ``reason`` goes to the audit log."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def _wait_text(seconds: float, now: float) -> str:
    minutes = math.ceil(seconds / 60)
    if seconds < 120:
        return f"in {math.ceil(seconds)} s"
    at = time.strftime("%H:%M UTC", time.gmtime(now + seconds))
    return f"in {minutes} min ({at})"


@dataclass
class _Address:
    tokens: float
    updated: float
    failures: int = 0
    first_failure: float = 0.0
    locked_until: float = 0.0


@dataclass
class AddressGuard:
    """Sans-I/O: a token bucket of attempts and a failure lockout per source address."""

    policy: LoginPolicy = field(default_factory=LoginPolicy)
    _seen: dict[str, _Address] = field(default_factory=dict)

    def _get(self, addr: str, now: float) -> _Address:
        addr = source_key(addr)  # as the listener: an IPv6 host holds a whole /64
        state = self._seen.get(addr)
        if state is None:
            if len(self._seen) >= self.policy.max_tracked_addresses:
                self._prune(now)
            state = self._seen[addr] = _Address(float(self.policy.address_burst), now)
        return state

    def _prune(self, now: float) -> None:
        """Forget addresses with a full bucket and no recent failure or lockout."""
        p = self.policy
        for addr, s in list(self._seen.items()):
            full = s.tokens + (now - s.updated) / p.address_refill >= p.address_burst
            if full and s.locked_until <= now and now - s.first_failure > p.failure_window:
                del self._seen[addr]
        while len(self._seen) >= p.max_tracked_addresses:  # still full: oldest first
            del self._seen[next(iter(self._seen))]

    def check(self, addr: str, now: float) -> None:
        """Take one attempt for ``addr``; raise :class:`LoginRefused` if it has none."""
        if not addr:
            return
        p, s = self.policy, self._get(addr, now)
        if s.locked_until > now:
            raise LoginRefused(
                "login refused: too many failed logins from your address; "
                f"try again {_wait_text(s.locked_until - now, now)}",
                "address locked out",
            )
        s.tokens = min(float(p.address_burst), s.tokens + (now - s.updated) / p.address_refill)
        s.updated = now
        if s.tokens < 1:
            wait = (1 - s.tokens) * p.address_refill
            raise LoginRefused(
                f"too many login attempts from your address; try again {_wait_text(wait, now)}",
                "address rate limited",
            )
        s.tokens -= 1

    def failed(self, addr: str, now: float) -> bool:
        """Count a failure; True if it locked the address."""
        if not addr:
            return False
        p, s = self.policy, self._get(addr, now)
        if now - s.first_failure > p.failure_window:
            s.failures, s.first_failure = 0, now
        s.failures += 1
        if s.failures >= p.max_address_failures:
            s.locked_until, s.failures = now + p.address_lockout, 0
            return True
        return False


class LoginGuard:
    """What :class:`hub.auth.service.AuthService` asks before and after checking credentials."""

    def __init__(
        self,
        storage: Storage,
        policy: LoginPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.policy = policy or LoginPolicy()
        self.clock = clock
        self.addresses = AddressGuard(self.policy)
        #: address -> until when it is served first for password hashes (hub/auth/hashgate.py)
        self._trusted: dict[str, float] = {}
        self._pruned = -math.inf  # clock time of the last pruning of login_guard rows
        #: user name -> start times of attempts past check() and not yet decided: a
        #: burst of guesses sent together counts against the limit before any fails
        self._in_flight: dict[str, list[float]] = {}

    async def check(self, user: str, addr: str) -> None:
        """Raise :class:`LoginRefused` if this attempt must not even be evaluated."""
        now = self.clock()
        self.addresses.check(addr, now)
        row = await self.storage.login_guards.get(user)
        if row is not None and row.locked_until is not None and row.locked_until > now:
            raise LoginRefused(
                "login refused: too many failed logins for this account; try again "
                f"{_wait_text(row.locked_until - now, now)} or ask an admin to run "
                "'tctl users unlock'",
                "user locked out",
            )
        window = self.policy.failure_window
        recent = row.failures if row and now - row.first_failure <= window else 0
        pending = [t for t in self._in_flight.get(user, ()) if now - t < IN_FLIGHT_TTL]
        if recent + len(pending) >= self.policy.max_user_failures:
            raise LoginRefused(
                "login refused: too many login attempts for this account at once; "
                "try again in a minute",
                "user attempts in flight",
            )
        pending.append(now)
        self._in_flight[user] = pending

    def _finished(self, user: str) -> None:
        pending = self._in_flight.get(user)
        if pending:
            pending.pop(0)
        if not pending:
            self._in_flight.pop(user, None)

    def abandoned(self, user: str) -> None:
        """An attempt past check() that ends undecided (e.g. the hub was busy)."""
        self._finished(user)

    async def failed(self, user: str, addr: str) -> bool:
        """Count a failure for the user name and the address; True if the user got locked."""
        now = self.clock()
        self._finished(user)
        self.addresses.failed(addr, now)
        if not _USER_NAME.fullmatch(user):
            return False  # not a possible user: nothing to lock, nothing to store
        p = self.policy
        # one statement in the database (UPSERT ... RETURNING): concurrent failures, from
        # this hub or another one, never overwrite each other's count
        row = await self.storage.login_guards.fail(
            user, now, GuardPolicy(p.failure_window, p.max_user_failures, p.user_lockout)
        )
        locked = row.failures == 0  # only the failure that locks leaves the count at 0
        if now - self._pruned >= p.prune_interval:
            self._pruned = now
            if await self.prune(now) >= p.prune_batch:  # more left: at the next failure
                self._pruned = -math.inf
        return locked

    async def prune(self, now: float) -> int:
        """Delete the rows of names whose failure window passed and that are not locked.

        Runs on a failure at most every ``prune_interval`` seconds, so the table holds
        about the names that failed within one window (each failure cost a password
        hash, hub/auth/hashgate.py), not every name ever tried.
        """
        p = self.policy
        return await self.storage.login_guards.prune(now - p.failure_window, now, p.prune_batch)

    async def succeeded(self, user: str, addr: str = "") -> None:
        self._finished(user)
        if addr:
            self._trust(addr)
        await self.storage.login_guards.clear(user)

    def _trust(self, addr: str) -> None:
        now = self.clock()
        self._trusted.pop(addr, None)  # re-inserted last: the dict stays oldest first
        if len(self._trusted) >= self.policy.max_trusted_addresses:
            for old in [a for a, until in self._trusted.items() if until <= now]:
                del self._trusted[old]
            while len(self._trusted) >= self.policy.max_trusted_addresses:
                del self._trusted[next(iter(self._trusted))]
        self._trusted[addr] = now + self.policy.trusted_address_ttl

    def trusted(self, addr: str) -> bool:
        """Did a login succeed from ``addr`` within ``trusted_address_ttl``?"""
        return bool(addr) and self._trusted.get(addr, 0.0) > self.clock()
