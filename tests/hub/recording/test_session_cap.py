"""Role option ``max_sessions``: a hostile client's stalled ``/v1/connect`` sessions
are bounded per user, refused with one line, and every slot comes back however
the connection ends. A real HubServer (TLS, websockets) and a real tunnel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import pytest
from hubkit import FakeAgent, Hub, new_key_line
from test_recording_session import Device, _ssh, proxied
from test_recording_session import _user as _proxy_user
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from remoteler.access import LOGINS_TRAIT, Role
from remoteler.errors import AccessDenied
from remoteler.hubconn import ERROR_HEADER, open_ws
from remoteler.protocol import CONNECT_SUBPROTOCOL
from remoteler.roleopts import (
    DEFAULT_MAX_SESSIONS,
    SESSIONS_PER_CONNECTION,
    SESSIONS_PER_CONNECTION_REFUSAL,
)
from remoteler.wire.aio import ChannelRequest

__all__ = ["proxied"]  # the fixture, from test_recording_session

FILL = b"x" * 65536


class Agent(FakeAgent):
    """Accepts every ``ssh`` channel, sends output nobody reads, and holds it open."""

    async def on_channel(self, request: ChannelRequest) -> None:
        assert request.kind == "ssh"
        channel = request.accept()
        with contextlib.suppress(Exception):
            channel.write(FILL)
            await channel.read(1)  # until the hub closes it


async def _user(hub: Hub, name: str, roles: list[str]) -> tuple[bytes, bytes]:
    user, _ = await hub.auth.add_user(name, roles, ["pi"])
    key_pem, pub = new_key_line()
    issued = await hub.auth.issue_user_certs(user, pub, None)
    return issued.tls_cert.encode(), key_pem


def _stalled(hub: Hub, creds: tuple[bytes, bytes]) -> Any:
    """A connect that never reads (the client library buffers one message, then stops)."""
    return connect(
        hub.url("/v1/connect?node=node-1&login=pi"),
        ssl=hub.tls(*creds),
        compression=None,
        subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
        open_timeout=5,
        close_timeout=1,
        max_queue=1,
    )


@contextlib.asynccontextmanager
async def _agent(hub: Hub) -> AsyncIterator[Agent]:
    agent = Agent()
    await agent.dial(hub, "node-1")
    try:
        yield agent
    finally:
        await agent.close()


async def _wait_count(hub: Hub, user: str, want: int) -> None:
    async with asyncio.timeout(5):
        while hub.server.sessions.count(user) != want:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("recording", ["", "proxy"])
async def test_extra_session_refused_then_allowed_after_one_closes(
    hub: Hub, recording: str
) -> None:
    """Both ways a session is served count: the byte relay and the recording proxy."""
    await hub.storage.roles.put(
        Role("ops", logins=(LOGINS_TRAIT,), node_labels={"*": ("*",)}, max_sessions=3)
    )
    alice = await _user(hub, "alice", ["ops", "access"])
    bob = await _user(hub, "bob", ["access"])
    open_: list[ClientConnection] = []
    async with _agent(hub):
        if recording:
            assert await hub.storage.nodes.set_recording("node-1", recording) is not None
        try:
            for _ in range(3):
                open_.append(await _stalled(hub, alice))
            with pytest.raises(InvalidStatus) as exc:
                await _stalled(hub, alice)
            response = exc.value.response
            assert response.status_code == 429
            assert response.headers[ERROR_HEADER] == "access_denied"
            line = "too many open sessions for alice (3, role ops); close one or ask an admin"
            assert response.body.decode().strip() == line
            # what tsh ssh / tsh scp print (as "tsh: ...", exit 255)
            with pytest.raises(AccessDenied, match=r"^too many open sessions for alice \(3"):
                await open_ws(
                    f"127.0.0.1:{hub.port}",
                    "/v1/connect?node=node-1&login=pi",
                    hub.tls(*alice),  # type: ignore[arg-type]
                    subprotocol=CONNECT_SUBPROTOCOL,
                )
            # another user is not affected
            open_.append(await _stalled(hub, bob))
            # a clean close gives the slot back
            await open_.pop(0).close()
            await _wait_count(hub, "alice", 2)
            open_.append(await _stalled(hub, alice))
            # so does a connection cut without a close handshake
            victim = open_.pop(0)
            victim.transport.abort()
            await _wait_count(hub, "alice", 2)
            open_.append(await _stalled(hub, alice))
            assert hub.server.sessions.count("alice") == 3
        finally:
            for ws in open_:
                ws.transport.abort()
        await _wait_count(hub, "alice", 0)
        await _wait_count(hub, "bob", 0)


async def test_default_cap_applies_without_the_option(hub: Hub) -> None:
    carol = await _user(hub, "carol", ["access"])
    open_: list[ClientConnection] = []
    async with _agent(hub):
        try:
            for _ in range(DEFAULT_MAX_SESSIONS):
                open_.append(await _stalled(hub, carol))
            with pytest.raises(InvalidStatus) as exc:
                await _stalled(hub, carol)
            assert exc.value.response.status_code == 429
            assert b"(32, the default)" in exc.value.response.body
        finally:
            for ws in open_:
                ws.transport.abort()
        await _wait_count(hub, "carol", 0)


async def test_refused_connect_holds_no_slot(hub: Hub) -> None:
    """A connect the access check refuses (no such node) never counts."""
    dave = await _user(hub, "dave", ["access"])
    with pytest.raises(InvalidStatus):
        async with connect(
            hub.url("/v1/connect?node=nope&login=pi"),
            ssl=hub.tls(*dave),
            subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
        ):
            pass
    assert hub.server.sessions.count("dave") == 0


async def test_slot_is_held_until_the_tcp_connection_is_gone(hub: Hub) -> None:
    """The session is over at the hub (the recording proxy gave up on bytes that are
    not SSH) but the client neither reads nor answers the close: its connection
    still costs the hub, and still counts, until it is gone."""
    erin = await _user(hub, "erin", ["access"])
    async with _agent(hub):
        assert await hub.storage.nodes.set_recording("node-1", "proxy") is not None
        live = hub.server.registry.live()[0]
        ws = await _stalled(hub, erin)
        ws.transport.pause_reading()  # reads nothing more, not even the close frame
        try:
            await _wait_count(hub, "erin", 1)
            await ws.send(b"SSH-1.0-not-ssh\r\n")  # the proxy's SSH server hangs up
            async with asyncio.timeout(5):
                while live.sessions:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # the handler has returned; the close is unanswered
            assert hub.server.sessions.count("erin") == 1
        finally:
            ws.transport.abort()
        await _wait_count(hub, "erin", 0)


async def test_recording_proxy_caps_sessions_per_connection(
    proxied: tuple[Hub, Device],
) -> None:
    """One connection multiplexes channels, and the proxy records each one here:
    at most SESSIONS_PER_CONNECTION at once, the next refused with one line."""
    h, _ = proxied
    key, cert, tls = await _proxy_user(h)
    async with await _ssh(h, key, cert, tls) as conn:
        held = [
            await conn.create_process("cat", encoding=None) for _ in range(SESSIONS_PER_CONNECTION)
        ]
        with pytest.raises(asyncssh.ChannelOpenError) as exc:
            await conn.create_process("cat", encoding=None)
        assert exc.value.reason == SESSIONS_PER_CONNECTION_REFUSAL
        held[0].stdin.write_eof()  # an ended session gives its place back
        await asyncio.wait_for(held[0].wait_closed(), 10)
        async with asyncio.timeout(10):
            while True:
                try:
                    again = await conn.create_process("cat", encoding=None)
                    break
                except asyncssh.ChannelOpenError:  # its end is being stored
                    await asyncio.sleep(0.05)
        for process in [*held[1:], again]:
            process.stdin.write_eof()
        await asyncio.wait_for(asyncio.gather(*(p.wait_closed() for p in [*held[1:], again])), 10)


async def test_slot_comes_back_when_the_websocket_guard_aborts(hub: Hub) -> None:
    """Across two parts of #14: a /v1/connect peer that sends PINGs and never reads is
    aborted by hub/net/wsguard.py's unsent cap, and that abort gives its max_sessions slot
    back (the slot is released when the TCP connection is gone, however it goes)."""
    from wsflood import flood, open_raw, ws_ping

    from hub.net.wsguard import WsGuardLimits

    await hub.storage.roles.put(
        Role("one", logins=(LOGINS_TRAIT,), node_labels={"*": ("*",)}, max_sessions=1)
    )
    alice = await _user(hub, "alice", ["one", "access"])
    assert hub.server.listener is not None
    hub.server.listener.guard = WsGuardLimits(max_unsent=64 * 1024)
    async with _agent(hub):
        _, writer = await open_raw(
            "127.0.0.1",
            hub.port,
            "/v1/connect?node=node-1&login=pi",
            hub.tls(*alice),  # type: ignore[arg-type]
            CONNECT_SUBPROTOCOL,
        )
        try:
            await _wait_count(hub, "alice", 1)
            # up to 30 s: the kernel buffers take MBs of PONGs before the hub holds any
            # unsent, and a loaded machine floods slowly (it returns once cut)
            result = await flood(writer, ws_ping(), 30.0)
            assert result.cut, f"the hub did not abort the flooder ({result.sent} PINGs)"
            await _wait_count(hub, "alice", 0)
        finally:
            writer.transport.abort()
        ws = await _stalled(hub, alice)  # the slot is free again
        ws.transport.abort()
        await _wait_count(hub, "alice", 0)


async def test_a_user_at_the_cap_gets_the_missing_node_answer_not_429(hub: Hub) -> None:
    """C7 and A4 together: the node check comes before the session count, so a user at
    their limit asking for a node they may not see gets the same 404 line as for a
    missing one; a 429 there would tell the node exists."""
    await hub.storage.roles.put(
        Role("one", logins=(LOGINS_TRAIT,), node_labels={"*": ("*",)}, max_sessions=1)
    )
    alice = await _user(hub, "alice", ["one", "access"])
    async with _agent(hub):
        held = await _stalled(hub, alice)
        try:
            with pytest.raises(InvalidStatus) as exc:
                async with connect(
                    hub.url("/v1/connect?node=nope&login=pi"),
                    ssl=hub.tls(*alice),
                    subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
                ):
                    pass
            response = exc.value.response
            assert response.status_code == 404
            assert "not found or access denied" in response.body.decode()
        finally:
            held.transport.abort()
        await _wait_count(hub, "alice", 0)
