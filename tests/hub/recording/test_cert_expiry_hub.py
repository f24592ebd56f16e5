"""``disconnect_expired_cert`` at the hub, for devices that cannot enforce it: the
recording proxy ends the user's sessions at the certificate's expiry (message,
exit 255, ``session.end`` reason), and the byte relay closes the websocket. A real
hub on loopback, a real tunnel, a test device whose asyncssh server knows nothing
of the flag, and an asyncssh client as the user with a 3-second certificate."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from hubkit import FakeAgent, Hub, new_key_line, running_hub
from test_recording_session import Device, _ssh
from websockets.asyncio.client import connect

import hub.api.server
from hub.recording.auth import upstream_cert
from hub.storage.api import AuditQuery
from remoteler.access import Role
from remoteler.ca import generate_private_key, parse_certificate, public_key_to_openssh
from remoteler.locks import Lock
from remoteler.protocol import CONNECT_SUBPROTOCOL
from remoteler.roleopts import DISCONNECT_EXTENSION, EXPIRED_REASON
from remoteler.wire.aio import ChannelRequest
from remoteler.wire.codes import OpenFailure

TTL = 3


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[tuple[Hub, Device]]:
    async with running_hub(tmp_path, audit=True) as h:
        dev = Device(h, "dev1")
        await dev.dial(h, dev.name)
        try:
            async with asyncio.timeout(5):
                while len(h.server.registry) != 1:
                    await asyncio.sleep(0.02)
            yield h, dev
        finally:
            await dev.close()


async def _short_user(h: Hub) -> tuple[Any, str, str]:
    """A user of the preset role with a ``TTL``-second certificate (flag on by default)."""
    user, _ = await h.auth.add_user("alice", ["access"], ["pi"])
    key = generate_private_key()
    issued = await h.auth.issue_user_certs(user, public_key_to_openssh(key.public_key()), TTL)
    assert DISCONNECT_EXTENSION in parse_certificate(issued.ssh_cert).extensions
    return key, issued.ssh_cert, issued.tls_cert


async def test_recording_proxy_ends_the_session_at_expiry(device: tuple[Hub, Device]) -> None:
    h, _ = device
    assert await h.storage.nodes.set_recording("dev1", "proxy") is not None
    key, cert, tls = await _short_user(h)
    started = time.monotonic()
    async with await _ssh(h, key, cert, tls) as conn:
        result = await asyncio.wait_for(conn.run("sleep 30", encoding=None, check=False), 15)
    assert time.monotonic() - started < 12
    assert result.exit_status == 255
    assert b"remoteler: your certificate expired at " in result.stderr
    assert h.server.audit is not None
    async with asyncio.timeout(5):
        while not (ends := await h.server.audit.search(AuditQuery(type="session.end", node="hub"))):
            await asyncio.sleep(0.05)
    assert ends[0].fields["reason"] == EXPIRED_REASON
    assert ends[0].fields["exit_status"] == 255


async def test_recording_proxy_goes_by_current_roles_too(device: tuple[Hub, Device]) -> None:
    """A certificate issued without the flag (its role said false) is still ended at
    expiry in the recording proxy once the role says true, as the byte relay does."""
    h, _ = device
    assert await h.storage.nodes.set_recording("dev1", "proxy") is not None
    ops = Role("ops", logins=("pi",), node_labels={"*": ("*",)}, disconnect_expired_cert=False)
    await h.storage.roles.put(ops)
    user, _ = await h.auth.add_user("alice", ["ops"], ["pi"])
    key = generate_private_key()
    issued = await h.auth.issue_user_certs(user, public_key_to_openssh(key.public_key()), TTL)
    assert DISCONNECT_EXTENSION not in parse_certificate(issued.ssh_cert).extensions
    await h.storage.roles.put(dataclasses.replace(ops, disconnect_expired_cert=True))
    async with await _ssh(h, key, issued.ssh_cert, issued.tls_cert) as conn:
        result = await asyncio.wait_for(conn.run("sleep 30", encoding=None, check=False), 15)
    assert result.exit_status == 255
    assert b"remoteler: your certificate expired at " in result.stderr


async def test_relay_closes_the_websocket_at_expiry(
    device: tuple[Hub, Device], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub.api.server, "EXPIRY_GRACE", 0.5, raising=False)
    h, _ = device
    key, cert, tls = await _short_user(h)
    started = time.monotonic()
    async with await _ssh(h, key, cert, tls) as conn:
        proc = await conn.create_process("sleep 30", encoding=None)
        await asyncio.wait_for(proc.wait_closed(), 15)  # the device would have run on
    assert time.monotonic() - started < 12


def test_upstream_certificate_drops_the_flag() -> None:
    """The hub's short device login must not end the session at its own expiry."""
    from remoteler.ca import CertAuthority

    ca = CertAuthority.generate("user", "test")
    user_key = generate_private_key()
    line = ca.sign_ssh_user_cert(
        user_key.public_key(),
        key_id="alice",
        principals=["pi"],
        ttl_seconds=600,
        extensions={DISCONNECT_EXTENSION: "", "permit-pty": ""},
    )
    up = upstream_cert(ca, parse_certificate(line), "pi", generate_private_key(), int(time.time()))
    assert set(parse_certificate(up).extensions) == {"permit-pty"}


class FloodingAgent(FakeAgent):
    """Accepts an ``ssh`` channel, writes output until the hub stops taking it, and
    keeps what the user sends; ``closed`` is set when the hub closes the channel."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed = asyncio.Event()

    async def on_channel(self, request: ChannelRequest) -> None:
        if request.kind != "ssh":
            request.reject(OpenFailure.UNKNOWN_KIND, "not here")
            return
        channel = request.accept()

        async def flood() -> None:
            with contextlib.suppress(Exception):
                while True:
                    channel.write(b"x" * 65536)
                    await channel.drain()

        writer = asyncio.ensure_future(flood())
        try:
            while data := await channel.read(65536):
                self.received += data
        except Exception:
            pass
        finally:
            self.closed.set()
            writer.cancel()


@pytest.mark.parametrize("cut", ["expiry", "lock"])
async def test_a_cut_relay_stops_a_client_that_does_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    """A client that never reads never sees the hub's close frame (its socket is
    full): the relay still stops, at expiry or on a lock, and nothing the client
    sends after that reaches the device."""
    monkeypatch.setattr(hub.api.server, "EXPIRY_GRACE", 0.2, raising=False)
    async with running_hub(tmp_path) as h:
        monkeypatch.setattr(h.server.locks, "grace", 0.1)
        agent = FloodingAgent()
        await agent.dial(h, "dev1")
        try:
            user, _ = await h.auth.add_user("alice", ["access"], ["pi"])
            key_pem, pub = new_key_line()
            issued = await h.auth.issue_user_certs(user, pub, 4 if cut == "expiry" else None)
            expires = x509.load_pem_x509_certificate(issued.tls_cert.encode()).not_valid_after_utc
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", h.port))
            ws = await connect(
                h.url("/v1/connect?node=dev1&login=pi"),
                ssl=h.tls(issued.tls_cert.encode(), key_pem),
                sock=sock,
                server_hostname="127.0.0.1",
                compression=None,
                subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
                max_queue=1,  # stops reading: the hub's sends back up
                close_timeout=1,
            )
            try:
                if cut == "expiry":
                    await asyncio.sleep(expires.timestamp() - time.time())
                else:
                    await h.storage.locks.add(
                        Lock("0123456789ab", "user", "alice", "", time.time())
                    )
                with contextlib.suppress(TimeoutError):  # the hub cuts within a second
                    await asyncio.wait_for(agent.closed.wait(), 3)
                await ws.send(b"after the cut")  # the client has not read the close
                await asyncio.sleep(0.5)
                assert b"after the cut" not in agent.received
                assert agent.closed.is_set(), "the device's channel outlived the cut"
            finally:
                ws.transport.abort()
        finally:
            await agent.close()
