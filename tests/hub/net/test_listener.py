"""The hub's two-lane accept loop against real TLS clients: agents queue, users do not."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hubkit import Hub, running_hub
from websockets.asyncio.client import connect

from hub.net.listener import ListenerLimits
from remoteler import rpc
from remoteler.protocol import TUNNEL_ALPN, TUNNEL_SUBPROTOCOL
from remoteler.tlsutil import client_context

TIGHT = ListenerLimits(tunnel_handshakes=1, hello_timeout=1.0, handshake_timeout=10.0)


@pytest.fixture
async def tight_hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path, TIGHT) as h:
        yield h


def hello(alpn: list[str] | None) -> bytes:
    """A real OpenSSL ClientHello, to send by hand and then stall."""
    obj = client_context(None, alpn=alpn).wrap_bio(
        ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="remoteler-hub"
    )
    with contextlib.suppress(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@contextlib.asynccontextmanager
async def raw(hub: Hub, data: bytes) -> AsyncIterator[tuple[asyncio.StreamReader, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.port)
    writer.write(data)
    await writer.drain()
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def closed_by_hub(reader: asyncio.StreamReader, timeout: float) -> None:
    """The hub closed the connection (a FIN, or a RST because our bytes were unread)."""
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), timeout) == b""


async def ping(hub: Hub) -> float:
    start = time.monotonic()
    async with connect(
        hub.url("/v1/rpc"),
        ssl=hub.tls(),
        compression=None,
        subprotocols=[rpc.SUBPROTOCOL],  # type: ignore[list-item]
        open_timeout=5,
    ) as ws:
        result = await asyncio.wait_for(rpc.RpcClient(ws).call("ping"), 5)
    assert result["cluster"] == "test"
    return time.monotonic() - start


async def open_tunnel(hub: Hub, creds: tuple[bytes, bytes]) -> Any:
    return await connect(
        hub.url("/v1/tunnel"),
        ssl=hub.tls(*creds, alpn=[TUNNEL_ALPN]),
        compression=None,
        subprotocols=[TUNNEL_SUBPROTOCOL],  # type: ignore[list-item]
        open_timeout=20,
    )


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_users_pass_while_the_tunnel_lane_is_full(tight_hub: Hub) -> None:
    listener = tight_hub.server.listener
    assert listener is not None
    creds = await tight_hub.node_creds()
    # An agent that sends its ClientHello and then stalls holds the only permit.
    async with raw(tight_hub, hello([TUNNEL_ALPN])):
        await wait_for(lambda: listener.lanes["tunnel"].admitted == 1)
        queued = asyncio.ensure_future(open_tunnel(tight_hub, creds))
        await wait_for(lambda: listener.lanes["tunnel"].waiting == 1)
        assert await ping(tight_hub) < 5.0  # the user lane is not behind the agents
        assert not queued.done()
    # The staller is gone: its permit goes to the queued agent, which gets through.
    ws = await asyncio.wait_for(queued, 15)
    assert ws.subprotocol == TUNNEL_SUBPROTOCOL
    await ws.close()
    assert listener.lanes["tunnel"].admitted == 2


async def test_a_peer_that_gave_up_while_queued_costs_no_handshake(tight_hub: Hub) -> None:
    listener = tight_hub.server.listener
    assert listener is not None
    async with raw(tight_hub, hello([TUNNEL_ALPN])):
        await wait_for(lambda: listener.lanes["tunnel"].admitted == 1)
        async with raw(tight_hub, hello([TUNNEL_ALPN])):
            await wait_for(lambda: listener.lanes["tunnel"].waiting == 1)
        await asyncio.sleep(0.1)  # the queued peer has closed
    await wait_for(lambda: listener.lanes["tunnel"].waiting == 0 and listener.queued == 0)
    assert listener.lanes["tunnel"].admitted == 1
    await ping(tight_hub)


async def test_slow_client_hello_is_closed(tight_hub: Hub) -> None:
    start = time.monotonic()
    async with raw(tight_hub, hello(None)[:7]) as (reader, _):
        await closed_by_hub(reader, 10)
    assert time.monotonic() - start < 8  # hello_timeout is 1 s
    await ping(tight_hub)


@pytest.mark.parametrize(
    "data", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\xff\xff" + bytes(64)]
)
async def test_not_tls_is_closed_at_once(tight_hub: Hub, data: bytes) -> None:
    async with raw(tight_hub, data) as (reader, _):
        await closed_by_hub(reader, 5)
    await ping(tight_hub)


async def test_many_agents_and_a_user_at_once(hub: Hub) -> None:
    """Default limits: 60 agents connecting together all get through, and so does a user."""
    creds = [await hub.node_creds(f"n{i}") for i in range(60)]
    tunnels = asyncio.gather(*(open_tunnel(hub, c) for c in creds))
    assert await ping(hub) < 10.0
    opened = await asyncio.wait_for(tunnels, 60)
    assert len(opened) == 60
    await asyncio.gather(*(ws.close() for ws in opened))


async def test_network_errors_from_accept_do_not_stop_the_listener(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux reports a pending connection's network error through accept() (accept(2)):
    that connection is lost, the listener must keep accepting."""
    loop = asyncio.get_running_loop()
    real = loop.sock_accept
    pending = [errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EPERM]

    async def accept(sock: Any) -> Any:
        if pending:
            raise OSError(pending.pop(), "network error of a pending connection")
        return await real(sock)

    monkeypatch.setattr(loop, "sock_accept", accept)
    async with running_hub(tmp_path) as h:
        assert await ping(h) < 5


def test_fast_path_agrees_with_the_parser() -> None:
    from hub.net.listener import _offers_tunnel_alpn
    from remoteler.tlshello import parse_client_hello

    agent, user = hello([TUNNEL_ALPN]), hello(None)
    assert _offers_tunnel_alpn(agent)
    assert not _offers_tunnel_alpn(user)
    assert not _offers_tunnel_alpn(agent[:-1])  # incomplete: left to the parser
    both = hello(["http/1.1", TUNNEL_ALPN])
    assert _offers_tunnel_alpn(both)
    parsed = parse_client_hello(both)
    assert parsed is not None and TUNNEL_ALPN in parsed.alpn


async def test_a_client_stalled_after_tls_holds_no_permit(tight_hub: Hub) -> None:
    listener = tight_hub.server.listener
    assert listener is not None
    creds = await tight_hub.node_creds()
    # TLS completes, then no HTTP request ever comes: the permit must be back.
    _, writer = await asyncio.open_connection(
        "127.0.0.1",
        tight_hub.port,
        ssl=tight_hub.tls(*creds, alpn=[TUNNEL_ALPN]),
        server_hostname="remoteler-hub",
    )
    try:
        await wait_for(lambda: listener.lanes["tunnel"].admitted == 1)
        ws = await asyncio.wait_for(open_tunnel(tight_hub, creds), 5)  # not after 10 s
        await ws.close()
    finally:
        writer.close()
