"""Password guessing from many source addresses (issue #14 A5), against a real hub on
loopback: the hub-wide cap on password hashes, the "hub busy" refusal, pruning of
login_guard rows."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pyotp
import pytest
from hubkit import PASSWORD, TOTP_SECRET, Clock, Hub, new_key_line, running_hub
from websockets.asyncio.client import connect

from hub.audit.budget import AuditBudget, AuditBudgetPolicy
from hub.auth import secrets as hs
from hub.auth.hashgate import BUSY_MESSAGE, HashGate, HashGatePolicy, HubBusy
from hub.auth.ratelimit import LoginGuard, LoginPolicy
from hub.storage.api import AuditQuery, Storage
from hub.storage.sqlite import open_sqlite
from remoteler import rpc
from remoteler.errors import RemotelerError

GUESSES = 48
HASH_SECONDS = 0.1  # what one hash costs in this test (production: ~0.2 s of CPU)


class CountingHash:
    """The real (test-cost) Argon2 verify, made to last HASH_SECONDS, counting how many
    run at once in the hub's two-thread pool."""

    def __init__(self, verify: Any) -> None:
        self.verify = verify
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.calls = 0

    def __call__(self, stored: str | None, password: str) -> bool:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(HASH_SECONDS)  # sleeps, so the test does not burn the shared CPUs
            return bool(self.verify(stored, password))
        finally:
            with self.lock:
                self.now -= 1


async def _login(hub: Hub, source: str, user: str, password: str, otp: str) -> tuple[str, float]:
    """One login RPC from the source address ``source``; (error message or "ok", seconds)."""
    _, pub = new_key_line()
    start = time.monotonic()
    async with connect(
        hub.url("/v1/rpc"),
        ssl=hub.tls(),
        compression=None,
        subprotocols=[rpc.SUBPROTOCOL],  # type: ignore[list-item]
        open_timeout=10,
        close_timeout=1,
        local_addr=(source, 0),  # Linux routes all of 127/8 to lo
    ) as ws:
        try:
            await asyncio.wait_for(
                rpc.RpcClient(ws).call(
                    "login", user=user, password=password, otp=otp, public_key=pub
                ),
                30,
            )
            return "ok", time.monotonic() - start
        except RemotelerError as err:
            return str(err), time.monotonic() - start


@pytest.mark.usefixtures("fast_argon2")
async def test_guesses_from_many_addresses_get_hub_busy_and_a_real_login_gets_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingHash(hs.verify_password)
    monkeypatch.setattr(hs, "verify_password", counting)
    policy = HashGatePolicy(max_hashes=1, max_waiting=4, max_wait=0.5)
    async with running_hub(tmp_path, audit=True) as hub:
        store = hub.server.audit
        assert store is hub.storage.audit
        hub.auth.audit = store
        hub.auth.hash_gate = HashGate(policy)
        await hub.auth.add_user("alice", ["access"], ["pi"], PASSWORD, TOTP_SECRET)

        # alice logged in from her usual address yesterday: it is served first now
        code = pyotp.TOTP(TOTP_SECRET).at(time.time() - 30)
        assert (await _login(hub, "127.2.0.1", "alice", PASSWORD, code))[0] == "ok"

        # one guess each from GUESSES addresses (a fresh bucket each), unknown names
        guesses = [
            _login(hub, f"127.1.{i // 200}.{i % 200 + 1}", f"guess{i}", "p" * 10, "123456")
            for i in range(GUESSES)
        ]
        attack = asyncio.gather(*guesses)
        gate = hub.auth.hash_gate
        for _ in range(200):  # until the burst is in (TLS handshakes first) and queued
            if gate.waiting >= policy.max_waiting:
                break
            await asyncio.sleep(0.05)
        assert gate.waiting >= policy.max_waiting, "the guesses should be queued by now"
        code = pyotp.TOTP(TOTP_SECRET).now()
        real, took = await _login(hub, "127.2.0.1", "alice", PASSWORD, code)
        # a first login from a new address queues with the guesses: it may be told to retry
        newcomer = "busy"
        deadline = time.monotonic() + 20
        while newcomer != "ok" and time.monotonic() < deadline:
            code = pyotp.TOTP(TOTP_SECRET).at(time.time() + 30)
            newcomer, _ = await _login(hub, "127.2.0.2", "alice", PASSWORD, code)
            if newcomer != "ok":
                assert newcomer == BUSY_MESSAGE, newcomer
                await asyncio.sleep(0.3)
        results = await attack

        assert real == "ok", f"the real user was refused while the guesses ran: {real}"
        assert took < policy.max_wait + 2.0, f"the real user waited {took:.1f} s"
        assert newcomer == "ok", newcomer
        busy = [t for msg, t in results if msg == BUSY_MESSAGE]
        failed = [msg for msg, _ in results if msg.startswith("login failed")]
        assert len(busy) + len(failed) == GUESSES, {m for m, _ in results}
        # 48 hashes one at a time would take ~4.8 s; most are refused instead, and quickly
        assert len(busy) >= GUESSES // 2, f"only {len(busy)} of {GUESSES} refused as busy"
        assert max(busy) < policy.max_wait + 3.0, f"a busy refusal took {max(busy):.1f} s"
        assert counting.peak <= policy.max_hashes, f"{counting.peak} hashes ran at once"
        assert hub.auth.hash_gate.peak <= policy.max_hashes
        assert hub.auth.hash_gate.running == 0 and hub.auth.hash_gate.waiting == 0

        events = [e for e in await store.search(AuditQuery(type="user.login", limit=1000))]
        reasons = [e.fields.get("reason") for e in events if e.fields.get("success") is False]
        assert reasons.count("hub busy") >= len(busy), "every busy refusal is audited"
        # a busy refusal is not a failed guess: it is not counted against the name
        first_busy = next(i for i, (msg, _) in enumerate(results) if msg == BUSY_MESSAGE)
        assert await hub.storage.login_guards.get(f"guess{first_busy}") is None


async def test_gate_refuses_at_once_when_the_queue_is_full_and_after_the_deadline() -> None:
    gate = HashGate(HashGatePolicy(max_hashes=1, max_waiting=1, max_wait=0.2))
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.slot():
            await release.wait()

    holder = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    waiter = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    start = time.monotonic()
    with pytest.raises(HubBusy):  # one waits already: the queue is full
        async with gate.slot():
            pass
    assert time.monotonic() - start < 0.1
    with pytest.raises(HubBusy):  # the waiter's deadline passes
        await waiter
    assert gate.waiting == 0 and gate.running == 1
    release.set()
    await holder
    assert gate.running == 0 and gate.peak == 1 and gate.refused == 2
    async with gate.slot():  # free again
        assert gate.running == 1


async def test_gate_serves_the_priority_lane_first() -> None:
    gate = HashGate(HashGatePolicy(max_hashes=1, max_waiting=8, max_wait=5.0))
    order: list[str] = []
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.slot():
            await release.wait()

    async def run(name: str, priority: bool) -> None:
        async with gate.slot(priority=priority):
            order.append(name)

    holder = asyncio.ensure_future(hold())
    await asyncio.sleep(0)
    tasks = [asyncio.ensure_future(run(f"guess{i}", False)) for i in range(3)]
    await asyncio.sleep(0)
    tasks.append(asyncio.ensure_future(run("regular", True)))
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(holder, *tasks)
    assert order == ["regular", "guess0", "guess1", "guess2"]


async def test_login_guard_rows_are_pruned_after_their_window(tmp_path: Path) -> None:
    clock = Clock()
    policy = LoginPolicy(max_user_failures=3, failure_window=600.0, user_lockout=1200.0)
    storage = await open_sqlite(tmp_path)
    try:
        guard = LoginGuard(storage, policy, clock=clock)
        for i in range(200):  # a spray of names, one guess each
            await guard.failed(f"name{i}", "")
        for _ in range(3):  # and one name locked out
            await guard.failed("alice", "")
        assert await _rows(storage) == 201
        clock.advance(policy.failure_window + 1)  # the window passed; alice still locked
        await guard.failed("late", "")
        left = await _rows(storage)
        assert left == 2, f"{left} rows left: only 'alice' (locked) and 'late' should be"
        assert (await storage.login_guards.get("alice")) is not None
        clock.advance(policy.user_lockout)  # the lockout and its window are over
        assert await guard.prune(clock()) == 2
        assert await _rows(storage) == 0
    finally:
        await storage.close()


async def test_login_guard_pruning_keeps_up_while_full_batches_come_back(tmp_path: Path) -> None:
    """Failures faster than one batch a minute (more hash slots, a faster machine): a full
    batch means more rows are due, so the next failure prunes again rather than a
    minute later, or the table grows for as long as the spray runs."""
    clock = Clock()
    policy = LoginPolicy(failure_window=600.0, prune_batch=10)
    storage = await open_sqlite(tmp_path)
    try:
        guard = LoginGuard(storage, policy, clock=clock)
        for i in range(50):
            await guard.failed(f"name{i}", "")
        clock.advance(policy.failure_window + 1)
        for i in range(3):  # three failures within a second
            await guard.failed(f"late{i}", "")
        left = await _rows(storage)
        assert left == 50 + 3 - 30, f"{left} rows left: 3 full batches should be gone"
    finally:
        await storage.close()


async def _rows(storage: Storage) -> int:
    with sqlite3.connect(Path(storage.path)) as db:  # type: ignore[attr-defined]
        return int(db.execute("SELECT COUNT(*) FROM login_guard").fetchone()[0])


@pytest.mark.usefixtures("fast_argon2")
async def test_login_refusals_by_the_limits_are_audited_within_a_budget(tmp_path: Path) -> None:
    """A refused login costs the peer one request; one durable audit row each let one
    address grow the audit database at request rate (195 a second measured)."""
    async with running_hub(tmp_path, audit=True) as hub:
        store = hub.server.audit
        assert store is hub.storage.audit
        hub.auth.audit = store
        hub.auth.login_refusals = AuditBudget(AuditBudgetPolicy(burst=20, refill=3600.0))
        _, pub = new_key_line()
        answers: list[str] = []
        async with connect(
            hub.url("/v1/rpc"),
            ssl=hub.tls(),
            compression=None,
            subprotocols=[rpc.SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=10,
            close_timeout=1,
            local_addr=("127.4.0.1", 0),
        ) as ws:
            client = rpc.RpcClient(ws)
            for _ in range(GUESSES * 2):
                try:
                    await client.call(
                        "login", user="alice", password="p" * 12, otp="123456", public_key=pub
                    )
                except RemotelerError as err:
                    answers.append(str(err))
        judged = [a for a in answers if a.startswith("login failed")]
        assert len(answers) == GUESSES * 2 and len(judged) < GUESSES, set(answers)
        events = await store.search(AuditQuery(type="user.login", limit=1000))
        limited = [e for e in events if e.fields["reason"] != "unknown user"]
        assert len([e for e in events if e.fields["reason"] == "unknown user"]) == len(judged)
        assert len(limited) == 20, f"{len(limited)} refusals by the limits audited"
        assert hub.auth.login_refusals.suppressed == GUESSES * 2 - len(judged) - 20


async def test_a_cancelled_login_holds_its_hash_slot_until_the_hash_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling the coroutine does not stop the Argon2 thread: were the slot freed at
    once, cancelled logins (a hub shutdown, a deadline around the handler) would let
    more hashes run or queue in the pool than the cap."""
    release = threading.Event()
    started = threading.Semaphore(0)

    def verify(stored: str | None, password: str) -> bool:
        started.release()
        release.wait(10)
        return False

    monkeypatch.setattr(hs, "verify_password", verify)
    async with running_hub(tmp_path) as hub:
        gate = hub.auth.hash_gate = HashGate(HashGatePolicy(max_hashes=1, max_wait=5.0))
        _, pub = new_key_line()
        first = asyncio.ensure_future(
            hub.auth.login("nobody", "p" * 12, "123456", pub, None, "127.6.0.1")
        )
        assert await asyncio.to_thread(started.acquire, True, 5), "the hash never started"
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert gate.running == 1, "the slot was freed while its hash still runs"
        second = asyncio.ensure_future(
            hub.auth.login("nobody2", "p" * 12, "123456", pub, None, "127.6.0.2")
        )
        await asyncio.sleep(0.1)
        assert gate.waiting == 1, "a second hash must wait for the first thread"
        release.set()
        with pytest.raises(RemotelerError, match="login failed"):
            await second
        for _ in range(50):
            if gate.running == 0:
                break
            await asyncio.sleep(0.02)
        assert gate.running == 0 and gate.waiting == 0 and gate.peak == 1


async def test_max_password_hashes_widens_the_argon2_pool_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """hub start --max-password-hashes 3: three hashes let in by the cap must run, not
    wait in the two-thread pool's queue, where no deadline applies."""
    from hub.app import auth_limits
    from hub.cli import build_parser

    counting = CountingHash(lambda stored, password: False)
    monkeypatch.setattr(hs, "verify_password", counting)
    args = build_parser().parse_args(["start", "--max-password-hashes", "3"])
    try:
        gate, _ = auth_limits(args)
        await asyncio.gather(
            *(gate.run(lambda: hs.verify_password_async(None, "p" * 12)) for _ in range(3))
        )
    finally:
        hs.set_hash_threads(HashGatePolicy.max_hashes)
    assert gate.peak == 3 and counting.peak == 3, f"{counting.peak} hashes ran at once"
