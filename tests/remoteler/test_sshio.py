"""asyncssh client and server talking over PipeTransport, joined by in-memory pipes."""

from __future__ import annotations

import asyncio

import asyncssh
import pytest

from remoteler.sshio import PipeTunnel, messages


class MemoryPipe:
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.peer: MemoryPipe | None = None
        self.sent = 0
        self.closed = False

    async def recv(self) -> bytes:
        return await self.inbox.get()

    def send(self, data: bytes) -> None:
        assert self.peer is not None
        if not self.closed:
            self.sent += len(data)
            self.peer.inbox.put_nowait(data)

    def buffered(self) -> int:
        return 0

    async def drain(self) -> None:
        return None

    def send_eof(self) -> None:
        self.close()

    def close(self) -> None:
        if not self.closed and self.peer is not None:
            self.closed = True
            self.peer.inbox.put_nowait(b"")


def pipe_pair() -> tuple[MemoryPipe, MemoryPipe]:
    a, b = MemoryPipe(), MemoryPipe()
    a.peer, b.peer = b, a
    return a, b


class EchoServer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no auth needed for this transport test


async def _handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
    data = await process.stdin.read()
    process.stdout.write(data[::-1])
    process.exit(5)


async def test_asyncssh_runs_over_pipes_both_ways() -> None:
    client_pipe, server_pipe = pipe_pair()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    peer = {"peername": ("127.0.0.1", 0)}
    server_task = asyncio.ensure_future(
        asyncssh.connect_reverse(
            tunnel=PipeTunnel(server_pipe, peer),
            config=None,
            server_factory=EchoServer,
            server_host_keys=[host_key],
            process_factory=_handle,
            encoding=None,
        )
    )
    async with asyncssh.connect(
        "node",
        tunnel=PipeTunnel(client_pipe, peer),
        config=None,
        known_hosts=None,
        username="u",
        agent_path=None,
        client_keys=None,
    ) as conn:
        payload = bytes(range(256)) * 4096  # 1 MiB: exercises SSH windows over the pipe
        result = await conn.run("reverse", input=payload, encoding=None)
        assert result.exit_status == 5
        assert result.stdout == payload[::-1]
    server_conn = await server_task
    server_conn.close()
    await server_conn.wait_closed()
    assert client_pipe.sent > len(payload)


def test_messages_join_small_chunks_and_slice_large_ones_in_order() -> None:
    chunks = [b"a" * 3, b"b" * 4, b"c" * 25, b"d" * 2, b"e" * 10]
    out = list(messages(chunks, 10))
    assert [bytes(m) for m in out] == [
        b"aaabbbb",
        b"c" * 10,
        b"c" * 10,
        b"c" * 5,
        b"dd",
        b"e" * 10,
    ]
    assert all(len(m) <= 10 for m in out)
    assert b"".join(bytes(m) for m in out) == b"".join(chunks)
    big = [bytes(range(256)) * 4]
    sliced = list(messages(big, 256))
    assert all(isinstance(m, memoryview) for m in sliced)  # no copy of large chunks
    assert list(messages([], 10)) == []


async def test_websocket_pipe_hands_text_to_on_text_and_reads_on() -> None:
    """A hub's notice (a text message, remoteler/notice.py) between SSH bytes: shown,
    not taken for the end of the stream; without on_text it still ends it."""
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve

    from remoteler.sshio import WebSocketPipe

    async def handler(ws: ServerConnection) -> None:
        await ws.send(b"one")
        await ws.send("hub restarting: this session ends in 30 s")
        await ws.send(b"two")
        await ws.close()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        shown: list[str] = []
        async with connect(url, compression=None) as ws:
            pipe = WebSocketPipe(ws, on_text=shown.append)
            assert [await pipe.recv() for _ in range(3)] == [b"one", b"two", b""]
            pipe.close()
        assert shown == ["hub restarting: this session ends in 30 s"]
        async with connect(url, compression=None) as ws:
            plain = WebSocketPipe(ws)
            assert [await plain.recv(), await plain.recv()] == [b"one", b""]
            plain.close()


def _name_list(*names: str) -> bytes:
    text = ",".join(names).encode()
    return len(text).to_bytes(4, "big") + text


def _weak_kexinit_packet() -> bytes:
    """A server's KEXINIT offering only algorithms we never accept (an unencrypted packet)."""
    payload = (
        bytes([20])
        + bytes(16)
        + _name_list("diffie-hellman-group1-sha1")
        + _name_list("ssh-rsa")
        + _name_list("aes128-cbc") * 2
        + _name_list("hmac-sha1") * 2
        + _name_list("none") * 2
        + _name_list() * 2
        + b"\0"
        + bytes(4)
    )
    pad = 8 - (5 + len(payload)) % 8
    pad += 8 if pad < 4 else 0
    body = bytes([pad]) + payload + bytes(pad)
    return len(body).to_bytes(4, "big") + body


async def test_data_and_end_in_one_go_reach_ssh_in_order() -> None:
    """The peer's last packet and its end of stream read at once (a resumable pipe hands
    both over together): asyncssh handles the KEXINIT in a task of its own, and must see
    it before the end, as it would over a socket, so the user reads the real reason."""
    pipe = MemoryPipe()
    pipe.peer = MemoryPipe()
    pipe.inbox.put_nowait(b"SSH-2.0-OpenSSH_5.3\r\n" + _weak_kexinit_packet())
    pipe.inbox.put_nowait(b"")
    with pytest.raises(asyncssh.KeyExchangeFailed):
        await asyncssh.connect(
            "node",
            tunnel=PipeTunnel(pipe, {"peername": ("127.0.0.1", 0)}),
            config=None,
            known_hosts=None,
            username="u",
            agent_path=None,
            client_keys=None,
        )
