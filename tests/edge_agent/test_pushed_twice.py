"""With tunnels to several hubs, every hub may push the same lock set or rotation
update: a second copy changes nothing, and rotation updates run one at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from localdevice import local_identity

from edge_agent import rotate
from edge_agent.agent import EdgeAgent
from edge_agent.locks import LockStore, serve_locks_channel
from remoteler.locks import Lock, encode_locks
from remoteler.protocol import LOCKS_KIND, ROTATE_KIND

NODE = "00000000-0000-4000-8000-0000000000b2"


class FakeChannel:
    """A channel that yields ``body`` then EOF and keeps what is written."""

    def __init__(self, body: bytes = b"") -> None:
        self.chunks = [body] if body else []
        self.written = b""
        self.closed = False

    async def read(self, n: int = -1) -> bytes:
        await asyncio.sleep(0)
        return self.chunks.pop(0) if self.chunks else b""

    def write(self, data: bytes) -> None:
        self.written += data

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class FakeRequest:
    def __init__(self, kind: str, channel: FakeChannel) -> None:
        self.kind, self.channel = kind, channel

    def accept(self) -> FakeChannel:
        return self.channel


async def test_the_same_lock_set_twice_is_taken_twice_with_one_effect(tmp_path: Path) -> None:
    store = LockStore(tmp_path / "locks.json", nodes=(NODE,))
    ended: list[str] = []
    store.track("alice", "pi", ended.append)
    locks = [Lock(id="a1b2c3d4e5f6", kind="user", target="alice", message="away")]
    body = encode_locks(locks)
    first, second = FakeChannel(body), FakeChannel(body)
    await asyncio.gather(serve_locks_channel(first, store), serve_locks_channel(second, store))
    assert first.written == second.written == b"ok"
    assert store.locks == locks
    assert (tmp_path / "locks.json").read_bytes() == body
    # the covered session was told twice; ending a session is idempotent (session.py)
    assert ended == ["session ended: " + locks[0].refusal()] * 2


async def test_rotation_updates_from_two_hubs_are_taken_one_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ident, _ = local_identity(NODE)
    agent = EdgeAgent(ident, {})
    running, most, order = [0], [0], []

    async def fake_serve(channel: Any, _ident: Any) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        order.append(("start", channel))
        await asyncio.sleep(0.05)
        order.append(("end", channel))
        running[0] -= 1

    monkeypatch.setattr(rotate, "serve_rotate_channel", fake_serve)
    a, b = FakeChannel(), FakeChannel()
    await asyncio.gather(
        agent.on_channel(FakeRequest(ROTATE_KIND, a)),  # type: ignore[arg-type]
        agent.on_channel(FakeRequest(ROTATE_KIND, b)),  # type: ignore[arg-type]
    )
    assert most[0] == 1
    assert order == [("start", a), ("end", a), ("start", b), ("end", b)]


async def test_locks_pushed_over_two_tunnels_reach_the_agent_store(tmp_path: Path) -> None:
    ident, _ = local_identity(NODE)
    agent = EdgeAgent(ident, {}, locks=LockStore(tmp_path / "locks.json", nodes=(NODE,)))
    locks = [Lock(id="0123456789ab", kind="login", target="root")]
    channels = [FakeChannel(encode_locks(locks)) for _ in range(2)]
    await asyncio.gather(
        *(agent.on_channel(FakeRequest(LOCKS_KIND, c)) for c in channels)  # type: ignore[arg-type]
    )
    assert [c.written for c in channels] == [b"ok", b"ok"]
    assert agent.locks.locks == locks
