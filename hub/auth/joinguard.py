"""Join protection: rate limits on join attempts per source address and hub-wide.

A join token is 128 random bits, so guessing one is hopeless; the limits bound
the work and the audit noise a guesser causes, and make a guessing run visible.
Failures are limited strictly, attempts loosely: a fleet being provisioned from
one address (a factory behind NAT, the test suite on 127.0.0.1) joins many nodes
with valid tokens, and a successful join gives its failure back.

Each attempt reserves one failure from its address's bucket and from the
hub-wide bucket before the token is looked up, so a burst sent together cannot
slip past the limit before any of it is judged; a valid token returns both.
The hub-wide bucket never refuses before the lookup: with it empty, an attempt
goes on without a reservation and only a valid token passes (an attacker with
many addresses must not hold up every real join; the lookup is one digest and
one indexed read, no more than the refusal's own audit write).

Sans-I/O: time is passed in. State is in memory (an address is cheap to change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hub.net.admission import source_key
from remoteler.errors import AuthError


@dataclass(frozen=True)
class JoinPolicy:
    address_failures: int = 10
    """Failed joins one address may make per ``failure_period`` (a token bucket)."""
    global_failures: int = 300
    """Failed joins from all addresses together per ``failure_period``."""
    failure_period: float = 600.0
    address_attempts: int = 120
    """Join attempts, failed or not, one address may make per minute."""
    max_tracked_addresses: int = 50_000


class JoinRefused(AuthError):
    """Refused before the token was looked up; ``reason`` goes to the audit log."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class _Bucket:
    size: float
    refill: float  # seconds per token
    tokens: float
    updated: float

    def level(self, now: float) -> float:
        return min(self.size, self.tokens + max(0.0, now - self.updated) / self.refill)

    def settle(self, now: float) -> None:
        self.tokens, self.updated = self.level(now), now

    def wait(self) -> float:
        """Seconds until one token is back (after :meth:`settle`)."""
        return max(0.0, (1 - self.tokens) * self.refill)

    def full(self, now: float) -> bool:
        return self.level(now) >= self.size


def _bucket(size: int, period: float, now: float) -> _Bucket:
    size = max(1, size)
    return _Bucket(float(size), period / size, float(size), now)


@dataclass
class _Address:
    attempts: _Bucket
    failures: _Bucket


@dataclass
class JoinGuard:
    policy: JoinPolicy = field(default_factory=JoinPolicy)
    _seen: dict[str, _Address] = field(default_factory=dict)
    _global: _Bucket | None = None

    def _hub(self, now: float) -> _Bucket:
        if self._global is None:
            p = self.policy
            self._global = _bucket(p.global_failures, p.failure_period, now)
        return self._global

    def _address(self, addr: str, now: float) -> _Address:
        state = self._seen.get(addr)
        if state is None:
            p = self.policy
            if len(self._seen) >= p.max_tracked_addresses:
                self._prune(now)
            state = self._seen[addr] = _Address(
                _bucket(p.address_attempts, 60.0, now),
                _bucket(p.address_failures, p.failure_period, now),
            )
        return state

    def _prune(self, now: float) -> None:
        """Forget addresses whose buckets are full again; if none, the oldest."""
        for addr, s in list(self._seen.items()):
            if s.attempts.full(now) and s.failures.full(now):
                del self._seen[addr]
        while len(self._seen) >= self.policy.max_tracked_addresses:
            del self._seen[next(iter(self._seen))]

    def check(self, addr: str, now: float) -> bool:
        """Take one attempt for ``addr`` and reserve one failure; raise :class:`JoinRefused`
        if the address has none left. Return whether a hub-wide failure was reserved:
        False (the hub-wide bucket is empty) means only a valid token may pass, see
        :meth:`refusal`. An empty ``addr`` (an in-process call) is limited only hub-wide."""
        hub = self._hub(now)
        hub.settle(now)
        # Keyed as the listener counts connections: an IPv6 host holds a whole /64.
        state = self._address(source_key(addr), now) if addr else None
        if state is not None:
            state.attempts.settle(now)
            state.failures.settle(now)
            if state.attempts.tokens < 1:
                raise JoinRefused(
                    "join refused: too many join attempts from your address; "
                    f"try again in {math.ceil(state.attempts.wait())} s",
                    "address rate limited",
                )
            if state.failures.tokens < 1:
                raise JoinRefused(
                    "join refused: too many failed joins from your address; "
                    f"try again in {math.ceil(state.failures.wait())} s with a valid token "
                    "(tctl tokens add --type node)",
                    "address failures",
                )
        if state is not None:
            state.attempts.tokens -= 1
            state.failures.tokens -= 1
        if hub.tokens < 1:
            return False
        hub.tokens -= 1
        return True

    def refusal(self, now: float) -> JoinRefused:
        """What a wrong token gets while the hub-wide bucket is empty."""
        hub = self._hub(now)
        hub.settle(now)
        return JoinRefused(
            "join refused: too many failed joins at the hub right now; "
            f"try again in {math.ceil(hub.wait())} s",
            "hub failures",
        )

    def succeeded(self, addr: str, now: float, hub_reserved: bool = True) -> None:
        """The token was valid: give back the failures :meth:`check` reserved."""
        hub = self._hub(now)
        hub.settle(now)
        if hub_reserved:
            hub.tokens = min(hub.size, hub.tokens + 1)
        state = self._seen.get(source_key(addr)) if addr else None
        if state is not None:
            state.failures.settle(now)
            state.failures.tokens = min(state.failures.size, state.failures.tokens + 1)
