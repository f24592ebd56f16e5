"""hub/api/drain_notice.py: the drain's lines, and notices sent over real websockets."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from hubkit import FakeAgent, Hub
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus

from hub.api.drain_notice import (
    SESSION_CUT,
    Notices,
    restart_refusal,
    seconds_left,
    session_notice,
)
from remoteler.hubconn import ERROR_HEADER
from remoteler.protocol import CONNECT_SUBPROTOCOL, TUNNEL_ALPN, TUNNEL_SUBPROTOCOL
from remoteler.wire.aio import ChannelRequest, Tunnel
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits


def test_seconds_left_rounds_up_and_is_never_zero() -> None:
    assert seconds_left(100.0, 70.0) == 30
    assert seconds_left(100.0, 70.2) == 30
    assert seconds_left(100.0, 99.9) == 1
    assert seconds_left(100.0, 120.0) == 1  # past the deadline: "in 1 s", never 0 or less


def test_lines() -> None:
    assert session_notice(30) == (
        "hub restarting: this session ends in 30 s; reconnect with the same command"
    )
    assert restart_refusal(12) == "hub is restarting, try again in 12 s"
    assert SESSION_CUT == "hub restarting: this session ends now; reconnect with the same command"


async def test_announce_reaches_every_open_relay_and_skips_closed_ones() -> None:
    notices = Notices()
    joined: list[ServerConnection] = []
    done = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        joined.append(ws)
        notices.add(ws)
        await done.wait()
        notices.discard(ws)

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with (
            connect(f"ws://127.0.0.1:{port}", compression=None) as one,
            connect(f"ws://127.0.0.1:{port}", compression=None) as two,
            connect(f"ws://127.0.0.1:{port}", compression=None) as gone,
        ):
            for _ in range(100):
                if len(joined) == 3:
                    break
                await asyncio.sleep(0.01)
            await gone.close()
            await asyncio.sleep(0.05)
            assert len(notices) == 3
            assert await notices.announce(session_notice(7)) == 2
            for client in (one, two):
                got = await asyncio.wait_for(client.recv(), 5)
                assert got == session_notice(7)  # a text message, one line
            at = time.monotonic() + 0.2
            assert await notices.announce_at(at, SESSION_CUT) == 2
            assert time.monotonic() >= at
            for client in (one, two):
                assert await asyncio.wait_for(client.recv(), 5) == SESSION_CUT
            done.set()


async def test_a_session_in_flight_when_the_drain_starts_hears_it_is_restarting(
    hub: Hub,
) -> None:
    """A connect waits on the probe of a quiet tunnel (up to 2 s); the drain starts
    meanwhile. It must be refused as 'restarting', not let into the draining hub
    unannounced nor told the node is not answering."""
    creds = await hub.node_creds("quiet-1")
    ws = await connect(
        hub.url("/v1/tunnel?heartbeat=0.2&misses=10"),
        ssl=hub.tls(*creds, alpn=[TUNNEL_ALPN]),
        compression=None,
        subprotocols=[TUNNEL_SUBPROTOCOL],  # type: ignore[list-item]
    )
    agent = Tunnel(ws, Connection(Role.DIALER, Limits(heartbeat_interval=0)))  # quiet
    task = asyncio.ensure_future(agent.run())
    user = hub.tls(*await hub.user_creds())
    try:
        for _ in range(100):
            if hub.server.registry.live():
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.6)  # silent for three intervals: a connect probes it
        ws.transport.pause_reading()  # its answer comes late

        async def session() -> None:
            async with connect(
                hub.url("/v1/connect?node=quiet-1&login=pi"),
                ssl=user,
                compression=None,
                subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
                open_timeout=10,
            ):
                pass

        connecting = asyncio.ensure_future(session())
        await asyncio.sleep(0.5)  # the connect is waiting on the probe
        assert not connecting.done()
        drain = asyncio.ensure_future(hub.server.drain(5.0, 1.0))
        await asyncio.sleep(0.1)
        ws.transport.resume_reading()
        with pytest.raises(InvalidStatus) as refused:
            await asyncio.wait_for(connecting, 10)
        await asyncio.wait_for(drain, 10)
    finally:
        await agent.close()
        await asyncio.gather(task, return_exceptions=True)
    response = refused.value.response
    assert (response.status_code, response.headers[ERROR_HEADER]) == (503, "restarting")
    assert response.body.decode().startswith("hub is restarting, try again in ")
    assert 1 <= int(response.headers["Retry-After"]) <= 5


class SshAgent(FakeAgent):
    """Accepts a session's ``ssh`` channel and reads it until it ends."""

    async def on_channel(self, request: ChannelRequest) -> None:
        channel = request.accept()
        with contextlib.suppress(Exception):
            while await channel.read(65536):
                pass


async def test_a_session_upgraded_as_the_drain_begins_is_told_too(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain begins after the connect's last check but before its relay joins
    the notice list (the websocket handshake in between): the announcement has gone
    out without it, so the relay tells it itself."""
    agent = SshAgent()
    await agent.dial(hub, "dev1")
    user = hub.tls(*await hub.user_creds())
    server = hub.server
    take_slot = server._take_session_slot

    def drain_begins_now(*args: object) -> None:
        take_slot(*args)  # type: ignore[arg-type]
        server.drain_deadline = time.monotonic() + 20.0  # and Notices.announce has run

    monkeypatch.setattr(server, "_take_session_slot", drain_begins_now)
    try:
        async with connect(
            hub.url("/v1/connect?node=dev1&login=pi&notices=1"),
            ssl=user,
            compression=None,
            subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=10,
        ) as ws:
            got = await asyncio.wait_for(ws.recv(), 5)
    finally:
        server.drain_deadline = None
        await agent.close()
    assert isinstance(got, str)
    assert got in {session_notice(20), session_notice(19)}
