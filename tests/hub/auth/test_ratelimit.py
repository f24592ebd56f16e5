"""Login protection without sockets: the address bucket and lockout with a fake clock,
and the persisted per-user lockout against a real SQLite storage."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyotp
import pytest
from hubkit import PASSWORD, TOTP_SECRET, Clock, new_key_line

from hub.auth.ratelimit import AddressGuard, LoginGuard, LoginPolicy, LoginRefused
from hub.auth.service import AuthService
from hub.storage.api import AuditQuery, Storage
from hub.storage.sqlite import open_sqlite
from remoteler.ca import CertAuthority
from remoteler.errors import AccessDenied, AuthError
from remoteler.locks import Lock


def test_address_bucket_allows_a_burst_then_one_attempt_per_refill() -> None:
    guard = AddressGuard(LoginPolicy(address_burst=3, address_refill=10.0))
    for _ in range(3):
        guard.check("10.0.0.1", 100.0)
    with pytest.raises(LoginRefused, match=r"from your address; try again in 10 s") as info:
        guard.check("10.0.0.1", 100.0)
    assert info.value.reason == "address rate limited"
    guard.check("10.0.0.2", 100.0)  # another address has its own bucket
    guard.check("10.0.0.1", 110.0)  # one token back after one refill period
    with pytest.raises(LoginRefused):
        guard.check("10.0.0.1", 110.0)


def test_address_lockout_after_repeated_failures_then_expiry() -> None:
    policy = LoginPolicy(max_address_failures=3, address_lockout=600.0, address_burst=100)
    guard = AddressGuard(policy)
    assert [guard.failed("a", 0.0) for _ in range(3)] == [False, False, True]
    with pytest.raises(LoginRefused, match=r"too many failed logins from your address"):
        guard.check("a", 10.0)
    guard.check("a", 601.0)


def test_address_table_is_bounded() -> None:
    guard = AddressGuard(LoginPolicy(max_tracked_addresses=10))
    for i in range(100):
        guard.check(f"10.0.0.{i}", float(i))
    assert len(guard._seen) <= 10


async def test_user_lockout_is_persisted_and_identical_for_unknown_names(tmp_path: Path) -> None:
    now = [1000.0]
    policy = LoginPolicy(max_user_failures=3, user_lockout=1200.0)
    storage = await open_sqlite(tmp_path)
    try:
        guard = LoginGuard(storage, policy, clock=lambda: now[0])
        messages = []
        for name in ("alice", "nobody-such"):  # one real user, one that does not exist
            assert [await guard.failed(name, "") for _ in range(3)] == [False, False, True]
            with pytest.raises(LoginRefused) as info:
                await guard.check(name, "")
            messages.append(str(info.value).replace(name, "NAME"))
        assert messages[0] == messages[1], "the answer must not tell real names apart"
        assert "try again in 20 min" in messages[0] and "tctl users unlock" in messages[0]
    finally:
        await storage.close()

    storage = await open_sqlite(tmp_path)  # a hub restart
    try:
        guard = LoginGuard(storage, policy, clock=lambda: now[0])
        with pytest.raises(LoginRefused):
            await guard.check("alice", "")
        now[0] += 1201
        await guard.check("alice", "")  # the lockout ended by itself
        await guard.failed("alice", "")
        await guard.succeeded("alice")  # a success forgets earlier failures
        assert await storage.login_guards.get("alice") is None
        assert await storage.login_guards.clear("nobody-such")
    finally:
        await storage.close()


async def test_failures_outside_the_window_do_not_add_up(tmp_path: Path) -> None:
    now = [0.0]
    storage = await open_sqlite(tmp_path)
    try:
        guard = LoginGuard(
            storage, LoginPolicy(max_user_failures=3, failure_window=60.0), clock=lambda: now[0]
        )
        for _ in range(2):
            assert not await guard.failed("alice", "")
        now[0] = 61.0
        for _ in range(2):
            assert not await guard.failed("alice", "")
        await guard.check("alice", "")
    finally:
        await storage.close()


async def test_concurrent_failures_all_count(tmp_path: Path) -> None:
    """A burst of wrong guesses in flight at once (from many addresses) must lock the
    user as surely as the same guesses one after the other: no lost update."""
    storage = await open_sqlite(tmp_path)
    try:
        guard = LoginGuard(storage, LoginPolicy(max_user_failures=3), clock=lambda: 100.0)
        results = await asyncio.gather(*(guard.failed("alice", f"10.0.0.{i}") for i in range(3)))
        assert sorted(results) == [False, False, True]
        with pytest.raises(LoginRefused, match="too many failed logins for this account"):
            await guard.check("alice", "10.9.9.9")
    finally:
        await storage.close()


# -- through AuthService ---------------------------------------------------------------


@pytest.mark.usefixtures("fast_argon2")
async def test_login_lockout_refuses_even_the_right_password_and_says_when(
    tmp_path: Path, storage: Storage, clock: Clock
) -> None:
    audit = storage.audit  # the storage's own audit.db, as the hub's
    auth = AuthService(storage, *_cas(), "test", clock=clock, audit=audit)
    await auth.add_user("alice", ["access"], ["pi"], password=PASSWORD, totp_secret=TOTP_SECRET)
    _, pub = new_key_line()
    for _ in range(auth.guard.policy.max_user_failures):
        with pytest.raises(AuthError, match="login failed"):
            await auth.login("alice", "wrong password!", "000000", pub, None, "10.1.1.1")
    code = str(pyotp.TOTP(TOTP_SECRET).at(clock()))
    with pytest.raises(LoginRefused, match="too many failed logins for this account"):
        await auth.login("alice", PASSWORD, code, pub, None, "10.2.2.2")
    clock.advance(auth.guard.policy.user_lockout + 1)
    code = str(pyotp.TOTP(TOTP_SECRET).at(clock()))
    await auth.login("alice", PASSWORD, code, pub, None, "10.2.2.2")

    events = [e for e in await audit.search(AuditQuery()) if e.type == "user.login"]
    failed = [e for e in events if e.fields.get("success") is False]
    assert [e.fields["reason"] for e in failed[:2]] == ["wrong password"] * 2
    assert failed[-2].fields["locked_out"] is True
    assert failed[-1].fields["reason"] == "user locked out"
    assert {e.fields["remote_addr"] for e in failed} == {"10.1.1.1", "10.2.2.2"}
    assert events[-1].fields["success"] is True
    dumped = repr([e.to_wire() for e in events])
    assert PASSWORD not in dumped and "wrong password!" not in dumped


@pytest.mark.usefixtures("fast_argon2")
async def test_a_locked_user_cannot_log_in(storage: Storage, clock: Clock) -> None:
    auth = AuthService(storage, *_cas(), "test", clock=clock)
    await auth.add_user("alice", ["access"], ["pi"], password=PASSWORD, totp_secret=TOTP_SECRET)
    await storage.locks.add(Lock("abc123abc123", "user", "alice", "ask the SOC", clock()))
    _, pub = new_key_line()
    code = str(pyotp.TOTP(TOTP_SECRET).at(clock()))
    with pytest.raises(AccessDenied, match="user 'alice' is locked by an administrator: ask"):
        await auth.login("alice", PASSWORD, code, pub, None)
    assert await storage.login_guards.get("alice") is None, "a lock is not a failed login"


def _cas() -> tuple[CertAuthority, CertAuthority]:
    return CertAuthority.generate("user", "test"), CertAuthority.generate("host", "test")


async def test_guesses_in_flight_count_before_they_fail(tmp_path: Path) -> None:
    """A burst of guesses sent together: all pass check() before any is judged, so
    the ones in flight must count, or a 5-failure limit lets 10 through."""
    storage = await open_sqlite(tmp_path)
    try:
        guard = LoginGuard(storage, LoginPolicy(max_user_failures=3), clock=lambda: 100.0)
        for i in range(3):
            await guard.check("alice", f"10.0.0.{i}")
        with pytest.raises(LoginRefused, match="at once"):
            await guard.check("alice", "10.0.0.9")
        await guard.succeeded("alice")  # one attempt decided: room for one more
        await guard.check("alice", "10.0.0.9")
    finally:
        await storage.close()


async def test_impossible_user_names_are_not_stored(tmp_path: Path) -> None:
    storage = await open_sqlite(tmp_path)
    try:
        guard = LoginGuard(storage, LoginPolicy(max_user_failures=1), clock=lambda: 100.0)
        name = "x" * 100_000
        assert await guard.failed(name, "10.0.0.1") is False
        assert await storage.login_guards.get(name) is None
    finally:
        await storage.close()


def test_ipv6_addresses_of_one_64_share_the_address_bucket() -> None:
    """Keyed as the listener counts peers (hub.net.admission.source_key): one /64, one bucket."""
    guard = AddressGuard(LoginPolicy(address_burst=2, address_refill=10.0))
    guard.check("2001:db8::1", 0.0)
    guard.check("2001:db8::2", 0.0)
    with pytest.raises(LoginRefused, match="too many login attempts"):
        guard.check("2001:db8::3", 0.0)
    guard.check("2001:db8:0:1::1", 0.0)  # another /64
