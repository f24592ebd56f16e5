"""The audit forwarder over real websockets: a Tunnel pair on 127.0.0.1, a tiny hub peer."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from edge_agent import forwarder
from edge_agent.forwarder import run_forwarder
from edge_agent.outbox import Outbox
from remoteler.audit.events import AuditEvent, EventType, make_event
from remoteler.audit.stream import MessageReader, ack_message, encode_message, parse_batch
from remoteler.wire.aio import ChannelRequest, Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.connection import Connection, Role

NODE = "node-1"


class Receiver:
    """The hub's side of the audit channel, minus the database: a dict keyed by id."""

    def __init__(self) -> None:
        self.stored: dict[str, AuditEvent] = {}
        self.received: Counter[str] = Counter()
        self.batches = 0
        #: after this many batches, drop the connection between "commit" and ack
        self.crash_after: int | None = None
        self.sockets: list[ServerConnection] = []
        self.changed = asyncio.Event()

    async def on_channel(self, request: ChannelRequest) -> None:
        if request.kind != "audit":
            request.reject(OpenFailure.UNKNOWN_KIND, "no such channel")
            return
        channel = request.accept()
        reader = MessageReader()
        while data := await channel.read():
            for message in reader.feed(data):
                events = parse_batch(message)
                for event in events:
                    self.received[event.id] += 1
                    self.stored.setdefault(event.id, event)  # idempotent insert
                self.batches += 1
                self.changed.set()
                if self.batches == self.crash_after:
                    self.sockets[-1].transport.abort()  # committed, never acked
                    return
                channel.write(encode_message(ack_message([e.id for e in events])))

    async def handler(self, ws: ServerConnection) -> None:
        self.sockets.append(ws)
        await Tunnel(ws, Connection(Role.LISTENER), on_channel=self.on_channel).run()


@asynccontextmanager
async def hub(receiver: Receiver) -> AsyncIterator[int]:
    async with serve(receiver.handler, "127.0.0.1", 0, compression=None) as server:
        yield server.sockets[0].getsockname()[1]


@asynccontextmanager
async def agent_tunnel(port: int) -> AsyncIterator[Tunnel]:
    async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
        tunnel = Tunnel(ws, Connection(Role.DIALER))
        task = asyncio.create_task(tunnel.run())
        try:
            yield tunnel
        finally:
            await tunnel.close()
            await asyncio.wait_for(task, 5)


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "outbox.db", node=NODE)
    try:
        yield box
    finally:
        await box.close()


def event(i: int) -> AuditEvent:
    return make_event(EventType.EXEC, node=NODE, command=f"cmd {i}", exit_code=0)


async def wait_until_empty(box: Outbox, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while (await box.depth())[0]:
            await asyncio.sleep(0.02)


async def test_all_events_arrive_including_ones_appended_later(outbox: Outbox) -> None:
    receiver = Receiver()
    first = await asyncio.gather(*(outbox.append(event(i)) for i in range(1000)))
    async with hub(receiver) as port, agent_tunnel(port) as tunnel:
        forwarder = asyncio.create_task(run_forwarder(outbox, tunnel, max_count=100))
        await wait_until_empty(outbox)
        later = [await outbox.append(event(i)) for i in range(5)]  # wakes the idle forwarder
        await wait_until_empty(outbox)
        await tunnel.close()
        await asyncio.wait_for(forwarder, 5)  # returns once the tunnel is gone
    ids = [e.id for e in [*first, *later]]
    assert list(receiver.stored) == ids  # in seq order
    assert set(receiver.received.values()) == {1}
    assert receiver.batches >= 11  # max_count respected
    assert receiver.stored[ids[0]].seq == 1


async def test_resumes_from_oldest_unacked_after_the_connection_dies(outbox: Outbox) -> None:
    receiver = Receiver()
    receiver.crash_after = 3
    appended = await asyncio.gather(*(outbox.append(event(i)) for i in range(3000)))
    async with hub(receiver) as port:
        async with agent_tunnel(port) as tunnel:
            await asyncio.wait_for(run_forwarder(outbox, tunnel, max_count=200), 10)
        count, _, _ = await outbox.depth()
        assert count == 3000 - 2 * 200  # batch 3 was stored by the hub but never acked
        assert len(receiver.stored) == 600

        async with agent_tunnel(port) as tunnel:
            forwarder = asyncio.create_task(run_forwarder(outbox, tunnel, max_count=200))
            await wait_until_empty(outbox)
            await tunnel.close()
            await asyncio.wait_for(forwarder, 5)
    ids = [e.id for e in appended]
    assert sorted(receiver.stored) == sorted(ids)  # every id, stored once
    resent = [i for i, n in receiver.received.items() if n > 1]
    assert resent == ids[400:600]  # exactly the unacked batch was sent again, first
    assert await outbox.depth() == (0, 0, None)


async def test_after_garbage_or_a_refusal_the_channel_is_opened_again(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub closes the audit channel (garbage here; a storage error or its quota's
    cut-off at a real hub) and then refuses one: the forwarder opens another on the
    same tunnel, after a wait, and the event arrives. It used to return and leave the
    outbox to the next tunnel, which on a steady link may be days away."""
    monkeypatch.setattr(forwarder, "REOPEN_FIRST", 0.05, raising=False)
    await outbox.append(event(0))
    receiver = Receiver()
    opened = 0

    async def flaky(request: ChannelRequest) -> None:
        nonlocal opened
        opened += 1
        if opened == 1:
            channel = request.accept()
            await channel.read()
            channel.write(b"\xff\xff\xff\xffnot a message")
            await channel.wait_closed()
        elif opened == 2:
            request.reject(OpenFailure.RESOURCE_SHORTAGE, "not now")
        else:
            await receiver.on_channel(request)

    async def handler(ws: ServerConnection) -> None:
        await Tunnel(ws, Connection(Role.LISTENER), on_channel=flaky).run()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with agent_tunnel(port) as tunnel:
            task = asyncio.create_task(run_forwarder(outbox, tunnel))
            await wait_until_empty(outbox, 5)
            assert opened == 3 and not task.done()
            await tunnel.close()
            await asyncio.wait_for(task, 5)  # ends with the tunnel
    assert list(receiver.received.values()) == [1]


async def test_no_ack_in_time_sends_again(outbox: Outbox) -> None:
    await outbox.append(event(0))
    receiver = Receiver()

    async def mute(request: ChannelRequest) -> None:
        channel = request.accept()
        reader = MessageReader()
        while data := await channel.read():
            for message in reader.feed(data):
                for e in parse_batch(message):
                    receiver.received[e.id] += 1
                    receiver.changed.set()

    async def handler(ws: ServerConnection) -> None:
        await Tunnel(ws, Connection(Role.LISTENER), on_channel=mute).run()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with agent_tunnel(port) as tunnel:
            forwarder = asyncio.create_task(run_forwarder(outbox, tunnel, ack_timeout=0.1))
            async with asyncio.timeout(5):
                while sum(receiver.received.values()) < 3:
                    receiver.changed.clear()
                    await receiver.changed.wait()
            await tunnel.close()
            await asyncio.wait_for(forwarder, 5)
    assert (await outbox.depth())[0] == 1  # never acked: still there for the next tunnel


async def test_a_drain_on_a_nearly_full_disk_never_fills_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """4.5 MiB of backlog on an 8 MiB tmpfs with 1.5 MiB left: deleting what the hub
    acked grows the WAL; checkpointed with TRUNCATE at half the 2 MiB reserve, it
    never takes the last of the disk (before: SQLITE_FULL once it passed 1.5 MiB)."""
    from tmpfskit import fill, tmpfs

    with tmpfs(tmp_path / "fs", 8 << 20) as fs:
        path = fs / "audit.db"
        pad = "x" * 3000
        for round_ in range(5):  # reopened each round: close() empties the WAL
            box = await Outbox.open(path, node=NODE)
            await asyncio.gather(
                *(
                    box.append(make_event(EventType.EXEC, node=NODE, command=pad, exit_code=i))
                    for i in range(round_ * 300, round_ * 300 + 300)
                )
            )
            await box.close()
        box = await Outbox.open(path, node=NODE)
        filler = fill(fs, leave=1536 << 10)
        try:
            receiver = Receiver()
            async with hub(receiver) as port, agent_tunnel(port) as tunnel:
                forwarder_task = asyncio.create_task(run_forwarder(box, tunnel, max_count=100))
                await wait_until_empty(box, timeout=30)
                await tunnel.close()
                await asyncio.wait_for(forwarder_task, 5)
            assert len(receiver.stored) == 1500
            assert not [r for r in caplog.records if "could not" in r.getMessage()]
            room = box.disk()
            assert room is not None and room.wal == 0
        finally:
            await box.close()
            filler.unlink()


async def test_a_bug_is_not_retried_as_a_storage_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only storage errors (sqlite3.OperationalError, OSError) are retried on the same
    channel: anything else is a bug that retrying cannot mend, and was held behind one
    warning ('retrying ... until it works') for ever. It is logged with its traceback
    and the channel is given up (opened again later). The bug is injected into the
    delete after the hub's ack: nothing real raises there but a storage error."""
    box = await Outbox.open(tmp_path / "audit.db", node=NODE)
    await box.append(make_event(EventType.EXEC, node=NODE, command="true", exit_code=0))

    async def buggy_ack(ids: list[str]) -> int:
        raise TypeError("a bug, not a full disk")

    monkeypatch.setattr(box, "ack", buggy_ack)
    try:
        receiver = Receiver()
        async with hub(receiver) as port, agent_tunnel(port) as tunnel:
            task = asyncio.create_task(run_forwarder(box, tunnel))
            async with asyncio.timeout(10):
                while not [r for r in caplog.records if r.exc_info]:
                    await asyncio.sleep(0.05)
            await tunnel.close()
            await asyncio.wait_for(task, 5)
        assert not [r for r in caplog.records if "until it works" in r.getMessage()]
        assert "audit forwarder failed" in caplog.text
    finally:
        await box.close()
