"""The device's resumable sessions (edge_agent/resume.py) over real tunnels on 127.0.0.1.

The "SSH server" here is an echo over the session's pipe: the registry serves any
byte service, and what matters is that the bytes, the handshake and the limits hold.
A tunnel's dialer plays the hub, opening ``ssh`` channels with the meta it would send.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from edge_agent.audit import AgentAudit
from edge_agent.outbox import Outbox
from edge_agent.resume import ResumeRegistry, ServeSSH
from remoteler.resume.frames import FrameParser, FrameType
from remoteler.resume.handshake import (
    Resume,
    parse_hello,
    parse_resumed,
    resume_frame,
)
from remoteler.resume.pipe import ResumablePipe
from remoteler.resume.stream import Control, ResumeStream
from remoteler.sshio import BytePipe, ChannelPipe
from remoteler.wire.aio import Channel, ChannelRequest, Tunnel
from remoteler.wire.connection import Connection, Role
from remoteler.wire.exceptions import ChannelOpenError
from remoteler.wire.limits import Limits

ALICE = {"user": "alice", "login": "root", "user_key": "k" * 64, "session_id": "s-1"}
served: list[Mapping[str, Any]] = []


async def echo(pipe: BytePipe, meta: Mapping[str, Any]) -> None:
    served.append(meta)
    while data := await pipe.recv():
        pipe.send(data)
        await pipe.drain()
    pipe.close()


@asynccontextmanager
async def device(registry: ResumeRegistry, service: ServeSSH = echo) -> AsyncIterator[Tunnel]:
    """The registry behind a tunnel; yields the hub's end of it."""

    async def on_channel(request: ChannelRequest) -> None:
        await registry.serve(request, service)

    async def handler(ws: ServerConnection) -> None:
        await Tunnel(ws, Connection(Role.LISTENER, Limits()), on_channel=on_channel).run()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            tunnel = Tunnel(ws, Connection(Role.DIALER, Limits()))
            task = asyncio.create_task(tunnel.run())
            try:
                yield tunnel
            finally:
                await tunnel.close()
                await asyncio.wait_for(task, 5)
                await registry.close()


async def _answer(channel: Channel, stream: ResumeStream) -> tuple[Any, list[Any]]:
    while True:
        data = await channel.read()
        assert data, "closed before the handshake"
        events = stream.receive(data, 0.0)
        for i, event in enumerate(events):
            if isinstance(event, Control):
                return event.frame, events[i + 1 :]


class Client:
    """What tsh does, over a tunnel channel instead of the hub's websocket."""

    def __init__(self, tunnel: Tunnel, meta: dict[str, Any] = ALICE) -> None:
        self.tunnel, self.meta = tunnel, meta
        self.pipe: ResumablePipe | None = None
        self.detaches: list[str] = []

    async def open(self) -> ResumablePipe:
        channel = await self.tunnel.open_channel("ssh", {**self.meta, "resume": "new"})
        stream = ResumeStream()
        frame, rest = await _answer(channel, stream)
        self.hello = parse_hello(frame)
        self.token = self.hello.token
        self.pipe = ResumablePipe(stream, self.detaches.append)
        self.pipe.attach(ChannelPipe(channel), 0, rest, told=0)
        return self.pipe

    async def resume(self, meta: dict[str, Any] | None = None, token: bytes | None = None) -> Any:
        assert self.pipe is not None
        sid = self.hello.session_id
        channel = await self.tunnel.open_channel("ssh", {**(meta or self.meta), "resume": sid})
        stream = self.pipe.stream
        stream.detach()
        told = stream.received
        resume = Resume(sid, token or self.token, told)
        channel.write(resume_frame(resume))
        frame, rest = await _answer(channel, stream)
        if frame.type == FrameType.REFUSE:
            return frame.payload.decode()
        answer = parse_resumed(frame)
        self.token = answer.token
        self.pipe.attach(ChannelPipe(channel), answer.received, rest, told=told)
        return answer


async def _read(pipe: BytePipe, n: int) -> bytes:
    got = b""
    async with asyncio.timeout(10):
        while len(got) < n:
            data = await pipe.recv()
            assert data, f"ended after {len(got)} bytes"
            got += data
    return got


async def test_bytes_written_while_detached_arrive_after_the_resume() -> None:
    registry = ResumeRegistry(None, grace=30)
    async with device(registry) as tunnel:
        client = Client(tunnel)
        pipe = await client.open()
        pipe.send(b"one ")
        assert await _read(pipe, 4) == b"one "
        assert pipe.link is not None
        pipe.link.close()  # the link goes: the hub's channel closes
        await asyncio.sleep(0.2)
        pipe.detach("test")
        pipe.send(b"two " * 1000)  # numbered and kept while detached
        answer = await client.resume()
        assert answer.received == 4
        assert await _read(pipe, 4000) == b"two " * 1000
        assert len(registry.sessions) == 1


async def test_another_identity_or_a_wrong_token_is_refused() -> None:
    registry = ResumeRegistry(None, grace=30)
    async with device(registry) as tunnel:
        client = Client(tunnel)
        await client.open()
        assert client.pipe is not None
        client.pipe.detach("test")
        bob = {**ALICE, "user": "bob"}
        other_key = {**ALICE, "user_key": "x" * 64}
        assert "another user" in await client.resume(bob)
        assert "another user" in await client.resume(other_key)
        assert "wrong resume token" in await client.resume(token=b"\1" * 32)
        old = client.token
        assert (await client.resume()).received == 0
        client.pipe.detach("again")
        assert "works once" in await client.resume(token=old)


async def test_a_session_past_its_grace_ends_and_says_why() -> None:
    registry = ResumeRegistry(None, grace=0.3)
    async with device(registry) as tunnel:
        client = Client(tunnel)
        await client.open()
        assert client.pipe is not None
        client.pipe.detach("test")
        await asyncio.sleep(1.0)
        assert registry.sessions == {}
        why = await client.resume()
        assert why == "the session ended on the device: not resumed within the 0.3 s resume grace"


async def test_a_silent_resume_is_closed_at_the_handshake_deadline() -> None:
    registry = ResumeRegistry(None, grace=30, handshake_timeout=0.5)
    async with device(registry) as tunnel:
        channel = await tunnel.open_channel("ssh", {**ALICE, "resume": "0" * 32})
        async with asyncio.timeout(5):
            assert await channel.read() == b""  # closed, nothing said


async def test_garbage_instead_of_a_resume_is_closed_and_harms_nothing() -> None:
    registry = ResumeRegistry(None, grace=30)
    async with device(registry) as tunnel:
        client = Client(tunnel)
        pipe = await client.open()
        for garbage in (b"\xff" * 64, b"\x02\xff\xff\xff\xff", b"\x02\x00\x00\x00\x01\xc1"):
            channel = await tunnel.open_channel("ssh", {**ALICE, "resume": client.hello.session_id})
            channel.write(garbage)
            async with asyncio.timeout(5):
                while await channel.read():
                    pass
        pipe.send(b"still here")
        assert await _read(pipe, 10) == b"still here"


async def test_the_number_of_sessions_is_capped() -> None:
    registry = ResumeRegistry(None, grace=30, max_sessions=2)
    async with device(registry) as tunnel:
        await Client(tunnel).open()
        await Client(tunnel).open()
        with pytest.raises(ChannelOpenError, match="2 resumable sessions already"):
            await Client(tunnel).open()


async def test_a_peer_that_never_acknowledges_cannot_grow_the_queue_past_its_cap() -> None:
    """The client's end: writes pile up while nothing is acknowledged, then the
    session ends with a message instead of eating memory."""
    registry = ResumeRegistry(None, grace=30, buffer=256 * 1024)
    async with device(registry) as tunnel:
        client = Client(tunnel)
        pipe = await client.open()
        pipe.detach("never comes back")
        pipe.stream.buffer_limit, pipe.stream.queue_limit = 256 * 1024, 1 << 20
        for _ in range(8):
            pipe.send(b"x" * (256 * 1024))
        assert pipe.ended is not None and "overflowed" in pipe.ended


async def last_words(pipe: BytePipe, meta: Mapping[str, Any]) -> None:
    """Reads to the end, then answers once the client is gone, and ends."""
    while await pipe.recv():
        pass
    await asyncio.sleep(0.5)
    pipe.send(b"exit-status 7")
    pipe.close()


async def test_the_last_bytes_of_an_ended_session_reach_a_client_that_resumes() -> None:
    """The device's SSH side ended while detached: the exit status still arrives."""
    registry = ResumeRegistry(None, grace=30)
    async with device(registry, last_words) as tunnel:
        client = Client(tunnel)
        pipe = await client.open()
        pipe.send_eof()
        await asyncio.sleep(0.2)
        pipe.detach("the link drops before the answer")
        await asyncio.sleep(1.0)  # the answer and the end of stream wait on the device
        session = next(iter(registry.sessions.values()))
        assert session.pipe.stream.unacked == len(b"exit-status 7") + 1
        answer = await client.resume()
        assert answer.received == 1  # our EOF
        assert await _read(pipe, 13) == b"exit-status 7"
        async with asyncio.timeout(5):
            assert await pipe.recv() == b""
            while registry.sessions:
                await asyncio.sleep(0.05)


async def flood(pipe: BytePipe, meta: Mapping[str, Any]) -> None:
    """Writes without waiting, as asyncssh does (it ignores pause_writing)."""
    for _ in range(16):
        pipe.send(b"y" * (256 * 1024))
        await asyncio.sleep(0)
    await pipe.recv()


async def test_a_client_that_never_acknowledges_ends_the_session_at_the_queue_cap(
    tmp_path: Path,
) -> None:
    """The hostile client reads nothing and acknowledges nothing: the device's queue
    stops at its cap, the session ends, the audit trail and a resume say why."""
    outbox = await Outbox.open(tmp_path / "audit.db", node="n1")
    audit = AgentAudit(outbox, "n1")
    registry = ResumeRegistry(audit, grace=30, buffer=256 * 1024, queue=1 << 20)
    try:
        async with device(registry, flood) as tunnel:
            channel = await tunnel.open_channel("ssh", {**ALICE, "resume": "new"})
            hello = parse_hello(FrameParser().feed(await channel.read())[0])
            async with asyncio.timeout(10):
                while registry.sessions:
                    await asyncio.sleep(0.05)
            client = Client(tunnel)
            client.hello, client.token = hello, hello.token
            client.pipe = ResumablePipe(ResumeStream(), client.detaches.append)
            why = await client.resume()
            assert why.startswith("the session ended on the device: the replay buffer overflowed")
        await audit.flush()
        events = [e for e in await outbox.batch() if e.type == "session.abandoned"]
        assert len(events) == 1 and "overflowed" in events[0].fields["reason"]
    finally:
        await outbox.close()
