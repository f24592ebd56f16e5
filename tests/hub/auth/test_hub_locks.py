"""The hub's lock watcher against real agent tunnels: pushes go only where needed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hubkit import FakeAgent, Hub, running_hub
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hub.auth import locks as hub_locks
from remoteler.locks import Lock, decode_locks, lock_digest
from remoteler.protocol import CONNECT_SUBPROTOCOL
from remoteler.wire.aio import ChannelRequest


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path) as h:
        yield h


class Agent(FakeAgent):
    """A minimal agent: a real tunnel that records the lock sets pushed to it."""

    def __init__(self, answer: bytes = b"ok") -> None:
        self.answer = answer
        self.pushed: list[list[Lock]] = []

    async def on_channel(self, request: ChannelRequest) -> None:
        if request.kind == "ssh":  # a user session: held open, nothing served
            request.accept()
            return
        assert request.kind == "locks"
        channel = request.accept()
        body = b""
        while data := await channel.read(65536):
            body += data
        self.pushed.append(decode_locks(body))
        channel.write(self.answer)  # as edge_agent/locks.py: "ok" once the set is saved
        channel.write_eof()
        channel.close()

    async def dial_with(self, hub: Hub, name: str, digest: str | None) -> None:
        await self.dial(hub, name, f"&locks={digest}" if digest is not None else "")


async def settle(hub: Hub, predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_an_agent_that_holds_the_current_set_gets_no_push(hub: Hub) -> None:
    current, stale = Agent(), Agent()
    await current.dial_with(hub, "current", lock_digest([]))
    await stale.dial_with(hub, "stale", None)  # an older agent, or one whose cache was lost
    try:
        await settle(hub, lambda: len(hub.server.registry) == 2)
        await settle(hub, lambda: stale.pushed == [[]])
        await asyncio.sleep(2.5)  # more than two poll intervals
        assert current.pushed == []

        lock = Lock("0123456789ab", "user", "mallory", "incident", time.time())
        await hub.storage.locks.add(lock)
        await settle(hub, lambda: current.pushed == [[lock]] and stale.pushed[-1] == [lock])
        assert len(stale.pushed) == 2
    finally:
        await current.close()
        await stale.close()


async def test_a_set_the_agent_did_not_take_is_pushed_again(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent answers "ok" once it saved the set; without it (the set was too large
    or unreadable there) the hub must not count the agent as up to date."""
    monkeypatch.setattr(hub_locks, "PUSH_RETRY", 0.2)
    refusing = Agent(answer=b"")
    await refusing.dial_with(hub, "refusing", None)
    try:
        await settle(hub, lambda: len(refusing.pushed) >= 3)
    finally:
        await refusing.close()


async def test_a_locked_session_is_cut_whatever_the_lock_message(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay ends with the lock's message as the close reason; a long non-ASCII
    message must still fit the close frame (else websockets refuses to close)."""
    monkeypatch.setattr(hub.server.locks, "grace", 0.1)
    agent = Agent()
    await agent.dial_with(hub, "node-1", lock_digest([]))
    try:
        await settle(hub, lambda: len(hub.server.registry) == 1)
        creds = await hub.user_creds("alice")
        async with connect(
            hub.url("/v1/connect?node=node-1&login=pi"),
            ssl=hub.tls(*creds),
            compression=None,
            subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=10,
        ) as ws:
            message = "このアカウントはセキュリティ上の理由でロックされています"
            await hub.storage.locks.add(Lock("0123456789ab", "user", "alice", message, time.time()))
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4403
        assert "locked by an administrator" in info.value.rcvd.reason
    finally:
        await agent.close()


def test_digest_is_of_the_set() -> None:
    one = Lock("0123456789ab", "user", "mallory", "", 1.0)
    two = Lock("ba9876543210", "node", "truck-042", "", 2.0)
    assert lock_digest([]) != lock_digest([one])
    assert lock_digest([one, two]) == lock_digest([one, two])
    assert len(lock_digest([one])) == 16


async def test_a_locked_user_cannot_list_nodes_or_read_sessions(hub: Hub) -> None:
    from remoteler import rpc
    from remoteler.errors import AccessDenied

    creds = await hub.user_creds("mallory")
    lock = Lock("0123456789ab", "user", "mallory", "incident 7", time.time())
    await hub.storage.locks.add(lock)
    await hub.server.locks.refresh()
    async with connect(
        hub.url("/v1/rpc"),
        ssl=hub.tls(*creds),
        compression=None,
        subprotocols=[rpc.SUBPROTOCOL],  # type: ignore[list-item]
    ) as ws:
        client = rpc.RpcClient(ws)
        for method, params in (("nodes.list", {}), ("audit.session", {"session_id": "x"})):
            with pytest.raises(AccessDenied, match="incident 7"):
                await client.call(method, **params)


@pytest.mark.parametrize("path", ["this hub", "another storage on the file"])
async def test_a_lock_ends_an_open_session_within_a_second_or_so(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A lock reaches open sessions through the change feed: this hub's own write at
    once, another process's (tctl, a second hub on the file) at the engine's next
    data_version poll (1 s). The bound is generous; the figure is printed."""
    from hub.storage.sqlite import open_sqlite

    monkeypatch.setattr(hub.server.locks, "grace", 0.0)
    other = await open_sqlite(tmp_path / "hubdata") if path != "this hub" else hub.storage
    agent = Agent()
    await agent.dial_with(hub, "node-1", lock_digest([]))
    try:
        await settle(hub, lambda: len(hub.server.registry) == 1)
        creds = await hub.user_creds("alice")
        async with connect(
            hub.url("/v1/connect?node=node-1&login=pi"),
            ssl=hub.tls(*creds),
            compression=None,
            subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=10,
        ) as ws:
            await asyncio.sleep(0.3)  # the relay is tracked
            started = time.monotonic()
            await other.locks.add(Lock("0123456789ab", "user", "alice", "", time.time()))
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
            took = time.monotonic() - started
        print(f"lock via {path} -> session ended in {took * 1000:.0f} ms")
        assert took < 2.5, f"{took:.2f} s from the lock to the session's end"
    finally:
        await agent.close()
        if other is not hub.storage:
            await other.close()
