"""Forward mode's relay (edge_agent.target) between a real tunnel and real TCP servers.

A hub-side and an agent-side Tunnel over a real websocket on 127.0.0.1; the agent
side answers ``ssh`` channels with serve_target_channel, towards asyncio TCP
servers on 127.0.0.1 standing in for the device's sshd; audit goes to a real
SQLite outbox.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from edge_agent import target
from edge_agent.audit import AgentAudit
from edge_agent.locks import LockStore
from edge_agent.outbox import Outbox
from remoteler.audit.events import AuditEvent
from remoteler.locks import Lock
from remoteler.wire.aio import Channel, ChannelRequest, Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.connection import Connection, Role
from remoteler.wire.exceptions import ChannelOpenError
from remoteler.wire.limits import Limits

META = {"user": "alice", "login": "pi", "session_id": "s-1", "remote_addr": "127.0.0.1"}
Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Echo, then half-close back when the client half-closes (as sshd would answer)."""
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.write_eof()
    await writer.drain()
    writer.close()


@asynccontextmanager
async def tcp_server(handler: Serve) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


class Rig:
    def __init__(self, hub: Tunnel, agent: Tunnel, outbox: Outbox, audit: AgentAudit) -> None:
        self.hub = hub
        self.agent = agent
        self.outbox = outbox
        self.audit = audit

    async def open(self) -> Channel:
        return await self.hub.open_channel("ssh", dict(META), timeout=15)

    async def events(self, type: str) -> list[AuditEvent]:
        await self.audit.flush()
        return [e for e in await self.outbox.batch(10_000) if e.type == type]


@asynccontextmanager
async def rig(
    tmp_path: Path,
    port: int,
    limits: Limits | None = None,
    quota: int = 1 << 20,
    locks: LockStore | None = None,
) -> AsyncIterator[Rig]:
    """Hub side (opens channels) and agent side (relays them to 127.0.0.1:port)."""
    outbox = await Outbox.open(
        tmp_path / "audit.db", quota_bytes=quota, policy="refuse-sessions", node="n1"
    )
    audit = AgentAudit(outbox, "n1")
    hubs: asyncio.Queue[Tunnel] = asyncio.Queue()

    async def hub_handler(ws: ServerConnection) -> None:
        tunnel = Tunnel(ws, Connection(Role.LISTENER, limits or Limits()))
        hubs.put_nowait(tunnel)
        await tunnel.run()

    async def on_channel(request: ChannelRequest) -> None:
        await target.serve_target_channel(request, "127.0.0.1", port, audit, locks)

    async with serve(hub_handler, "127.0.0.1", 0, compression=None) as server:
        hub_port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{hub_port}", compression=None) as ws:
            agent = Tunnel(ws, Connection(Role.DIALER, limits or Limits()), on_channel=on_channel)
            task = asyncio.create_task(agent.run())
            try:
                yield Rig(await hubs.get(), agent, outbox, audit)
            finally:
                if not agent.closed.is_set():
                    await agent.close()
                await asyncio.wait_for(task, 5)
                await audit.flush()
                await outbox.close()


async def read_all(channel: Channel) -> bytes:
    parts = []
    while data := await channel.read():
        parts.append(data)
    return b"".join(parts)


async def test_echo_both_ways_with_half_close_and_audit(tmp_path: Path) -> None:
    payload = os.urandom(3 << 20)
    async with tcp_server(echo) as port, rig(tmp_path, port) as r:
        channel = await r.open()
        [start] = await r.events("ssh.forward.start")  # durable before the channel opened
        assert (start.user, start.login, start.session_id) == ("alice", "pi", "s-1")
        assert start.fields == {"target": f"127.0.0.1:{port}"}

        async def send() -> None:
            for i in range(0, len(payload), 100_000):
                channel.write(payload[i : i + 100_000])
                await channel.drain()
            channel.write_eof()  # -> the server sees EOF, answers with its own

        _, echoed = await asyncio.wait_for(asyncio.gather(send(), read_all(channel)), 30)
        assert echoed == payload
        await asyncio.wait_for(channel.wait_closed(), 5)
        end = await wait_events(r, "ssh.forward.end")
        assert end.session_id == "s-1"
        assert end.fields["bytes_in"] == end.fields["bytes_out"] == len(payload)
        assert end.fields["target"] == f"127.0.0.1:{port}"


async def wait_events(r: Rig, type: str) -> AuditEvent:
    deadline = time.monotonic() + 10
    while not (found := await r.events(type)):
        assert time.monotonic() < deadline, f"no {type} event"
        await asyncio.sleep(0.02)
    [event] = found
    return event


async def test_user_eof_reaches_target_which_still_answers(tmp_path: Path) -> None:
    """Half-close user -> target: the target reads to EOF, then sends its answer back."""

    async def digest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h = hashlib.sha256(await reader.read())  # read() = until EOF
        writer.write(h.hexdigest().encode())
        await writer.drain()
        writer.close()

    data = os.urandom(500_000)
    async with tcp_server(digest) as port, rig(tmp_path, port) as r:
        channel = await r.open()
        channel.write(data)
        channel.write_eof()
        answer = await asyncio.wait_for(read_all(channel), 10)
        assert answer == hashlib.sha256(data).hexdigest().encode()


async def test_target_refused_rejects_channel_with_reason(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with rig(tmp_path, port) as r:
        with pytest.raises(ChannelOpenError) as info:
            await r.open()
        assert info.value.code == OpenFailure.CONNECT_FAILED
        assert f"sshd at 127.0.0.1:{port} is unreachable (Connection refused)" in info.value.reason
        event = await wait_events(r, "ssh.forward.start")
        assert "Connection refused" in event.fields["error"] and event.login == "pi"
        assert await r.events("ssh.forward.end") == []


async def test_target_silent_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A target whose accept queue is full drops our SYN: refused after CONNECT_TIMEOUT."""
    monkeypatch.setattr(target, "CONNECT_TIMEOUT", 0.5)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the backlog (never accepted)
            filler = socket.socket()
            filler.setblocking(False)
            with suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        async with rig(tmp_path, port) as r:
            with pytest.raises(ChannelOpenError) as info:
                await asyncio.wait_for(r.open(), 10)
            assert "no answer within 0.5s" in info.value.reason
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


async def test_target_reset_closes_the_channel(tmp_path: Path) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-fake\r\n")
        await writer.drain()
        await reader.readexactly(5)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST

    async with tcp_server(reset) as port, rig(tmp_path, port) as r:
        channel = await r.open()
        assert await channel.read() == b"SSH-2.0-fake\r\n"
        channel.write(b"hello")
        assert await asyncio.wait_for(read_all(channel), 10) == b""
        await asyncio.wait_for(channel.wait_closed(), 10)
        end = await wait_events(r, "ssh.forward.end")
        assert (end.fields["bytes_in"], end.fields["bytes_out"]) == (5, 14)


async def test_user_close_closes_target(tmp_path: Path) -> None:
    closed = asyncio.Event()

    async def wait_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner")
        await reader.read()  # EOF or reset when the relay drops us
        closed.set()
        writer.close()

    async with tcp_server(wait_eof) as port, rig(tmp_path, port) as r:
        channel = await r.open()
        assert await channel.read() == b"banner"
        channel.close()  # the user went away without a half-close
        await asyncio.wait_for(closed.wait(), 10)
        await wait_events(r, "ssh.forward.end")


async def test_agent_stopping_mid_relay_closes_target_and_records_the_end(
    tmp_path: Path,
) -> None:
    closed = asyncio.Event()

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner")
        await reader.read()
        closed.set()
        writer.close()

    async with tcp_server(banner) as port, rig(tmp_path, port) as r:
        channel = await r.open()
        assert await channel.read() == b"banner"
        await r.agent.close()  # the agent's tunnel stops: its relay tasks are cancelled
        await asyncio.wait_for(closed.wait(), 10)
        end = await wait_events(r, "ssh.forward.end")
        assert (end.fields["bytes_in"], end.fields["bytes_out"]) == (0, 6)


async def test_locks_refuse_and_end_forwarded_sessions(tmp_path: Path) -> None:
    ended = asyncio.Event()

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner")
        await reader.read()
        ended.set()
        writer.close()

    store = LockStore(nodes=("n1", "legacy-1"))
    async with tcp_server(banner) as port, rig(tmp_path, port, locks=store) as r:
        channel = await r.open()
        assert await channel.read() == b"banner"
        other = await r.hub.open_channel("ssh", {**META, "user": "bob"})
        # A lock on alice arrives (pushed by the hub): her relay ends, bob's goes on.
        store.replace([Lock("0123456789ab", "user", "alice", "compromised laptop")])
        await asyncio.wait_for(channel.wait_closed(), 10)
        await asyncio.wait_for(ended.wait(), 10)
        assert not other.is_closed and await other.read() == b"banner"
        with pytest.raises(ChannelOpenError) as info:
            await r.open()  # and she cannot start another
        assert info.value.code == OpenFailure.PROHIBITED
        assert info.value.reason == "user 'alice' is locked by an administrator: compromised laptop"
        other.close()


async def test_slow_target_holds_the_user_back(tmp_path: Path) -> None:
    """The relay drains the socket before reading more: a stalled target stalls the
    user's channel at its window instead of being buffered in the agent."""
    go = asyncio.Event()
    got = hashlib.sha256()
    done = asyncio.Event()

    async def stalled(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await go.wait()
        while data := await reader.read(1 << 20):
            got.update(data)
        done.set()
        writer.close()

    payload = os.urandom(32 << 20)
    limits = Limits(initial_window=256 * 1024)
    async with tcp_server(stalled) as port, rig(tmp_path, port, limits) as r:
        channel = await r.open()
        channel.write(payload)  # all at once, no drain: the tunnel holds what the window refuses
        last, since = -1, time.monotonic()
        while time.monotonic() - since < 0.5:  # wait until nothing moves any more
            now = channel.buffered_amount
            if now != last:
                last, since = now, time.monotonic()
            await asyncio.sleep(0.02)
        assert channel.buffered_amount > 16 << 20  # kernel buffers took a few MiB at most
        go.set()
        channel.write_eof()
        await asyncio.wait_for(done.wait(), 30)
        assert got.digest() == hashlib.sha256(payload).digest()


async def test_full_outbox_refuses_before_dialling(tmp_path: Path) -> None:
    dialled = 0

    async def count(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal dialled
        dialled += 1
        writer.close()

    async with tcp_server(count) as port, rig(tmp_path, port) as r:
        channel = await r.open()
        channel.close()
        # No room left under the quota for a session's start, end and some recording.
        r.outbox.quota_bytes = 1
        with pytest.raises(ChannelOpenError) as info:
            await r.open()
        assert info.value.code == OpenFailure.RESOURCE_SHORTAGE
        assert info.value.reason == target.AUDIT_FULL
        assert dialled == 1


async def test_a_full_disk_is_named_as_such(tmp_path: Path) -> None:
    """Refused by the disk's reserve (not the outbox quota), the user reads that the
    device's disk is full, not that its outbox is: reaching the hub would not help."""

    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with tcp_server(close) as port, rig(tmp_path, port) as r:
        r.outbox.reserve_bytes = 1 << 60  # more than any disk has free
        with pytest.raises(ChannelOpenError) as info:
            await r.open()
        assert info.value.code == OpenFailure.RESOURCE_SHORTAGE
        assert info.value.reason == target.DISK_FULL
        assert "disk is full" in target.DISK_FULL and len(target.DISK_FULL) < 100


def test_forward_mode_never_imports_asyncssh(tmp_path: Path) -> None:
    """An agent in forward mode relays a session without loading asyncssh (~39 MB RSS)."""
    script = textwrap.dedent(
        """
        import asyncio, sys, types
        from websockets.asyncio.client import connect
        from websockets.asyncio.server import serve
        from edge_agent.agent import EdgeAgent
        from remoteler.wire.aio import Tunnel
        from remoteler.wire.connection import Connection, Role
        from remoteler.wire.limits import Limits

        async def echo(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
            writer.close()

        async def main():
            tcp = await asyncio.start_server(echo, "127.0.0.1", 0)
            ident = types.SimpleNamespace(
                node_id="n1", name="legacy", token_labels={}, hub="127.0.0.1:9",
                ssh_cert="", tls_cert=b"",  # unreadable: the heartbeat has no expiry
            )
            agent = EdgeAgent(ident, {})
            agent.ssh_target = ("127.0.0.1", tcp.sockets[0].getsockname()[1])
            assert agent.heartbeat_payload()["ssh"] == "forward"
            hubs = asyncio.Queue()

            async def handler(ws):
                t = Tunnel(ws, Connection(Role.LISTENER, Limits()))
                hubs.put_nowait(t)
                await t.run()

            async with serve(handler, "127.0.0.1", 0, compression=None) as srv:
                port = srv.sockets[0].getsockname()[1]
                async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
                    t = Tunnel(ws, Connection(Role.DIALER, Limits()), on_channel=agent.on_channel)
                    task = asyncio.ensure_future(t.run())
                    hub = await hubs.get()
                    ch = await hub.open_channel("ssh", {"user": "a", "login": "pi"})
                    ch.write(b"ping")
                    assert await ch.read() == b"ping"
                    await t.close()
                    await task
            print(sorted(m for m in sys.modules if m.split(".")[0] == "asyncssh"))

        asyncio.run(main())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_unreachable_reason_is_one_line() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('h', 22)")
    reason = target.unreachable_reason("127.0.0.1", 22, refused)
    assert reason == (
        "the device's sshd at 127.0.0.1:22 is unreachable (Connection refused); check that it runs"
    )
    assert "(OSError)" in target.unreachable_reason("h", 1, OSError("x\ny"))
    assert "(no answer within 10s)" in target.unreachable_reason("h", 1, TimeoutError())


def test_cli_refuses_ssh_target_with_local_listen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_agent.cli import main

    argv = ["start", "--data-dir", str(tmp_path / "agent"), "--ssh-target", "127.0.0.1:22"]
    assert main([*argv, "--local-listen", "127.0.0.1:2222"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edge-agent: --local-listen serves the embedded SSH server")
    assert main([*argv[:-1], "no-port"]) == 2
    assert "bad address 'no-port'" in capsys.readouterr().err
    assert not (tmp_path / "agent").exists()  # refused before joining or creating anything


def test_docs_quote_the_real_unreachable_text() -> None:
    """docs/legacy-devices.md quotes what the user reads when the device's sshd is down."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "legacy-devices.md").read_text()
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed")
    why = target.unreachable_reason("127.0.0.1", 22, refused)
    line = f"tsh: node 'legacy-1': {why}"
    assert f"`{line}`" in " ".join(doc.split()), line
