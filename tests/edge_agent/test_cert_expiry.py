"""``disconnect_expired_cert`` on the device: the embedded SSH server (reached over a
real loopback ``--local-listen`` socket, no hub) ends a session when a certificate
carrying the flag expires, with a message, exit 255 and a ``session.end`` reason;
a certificate without the flag keeps running past its expiry (checked at login only,
as OpenSSH)."""

from __future__ import annotations

import asyncio
import os
import pwd
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from localdevice import local_identity

from edge_agent.audit import AgentAudit
from edge_agent.local import start_local_listener
from edge_agent.outbox import Outbox
from remoteler.access import ACCESS_ROLE, RULES_EXTENSION, encode_rules, resolve_rules
from remoteler.ca import (
    DEFAULT_USER_EXTENSIONS,
    CertAuthority,
    generate_private_key,
    private_key_to_openssh,
)
from remoteler.roleopts import DISCONNECT_EXTENSION, EXPIRED_REASON

ME = pwd.getpwuid(os.geteuid()).pw_name
NODE = "00000000-0000-4000-8000-000000000001"
TTL = 3  # seconds; login must finish within it on a loaded machine


@dataclass
class Device:
    user_ca: CertAuthority
    port: int
    outbox: Outbox


@pytest.fixture
async def device(tmp_path: Path) -> AsyncIterator[Device]:
    ident, user_ca = local_identity(NODE)
    outbox = await Outbox.open(tmp_path / "outbox.db", node=NODE)
    server = await start_local_listener(
        "127.0.0.1", 0, ident, lambda: {"env": "lab"}, AgentAudit(outbox, NODE)
    )
    try:
        yield Device(user_ca, server.sockets[0].getsockname()[1], outbox)
    finally:
        server.close()
        await server.wait_closed()
        await outbox.close()


async def _connect(device: Device, *, flag: bool) -> Any:
    """Log in with a certificate signed directly by the user CA, ``TTL`` seconds long."""
    key = generate_private_key()
    extensions = dict(DEFAULT_USER_EXTENSIONS)
    extensions[RULES_EXTENSION] = encode_rules(resolve_rules([ACCESS_ROLE], [ME]))
    if flag:
        extensions[DISCONNECT_EXTENSION] = ""
    cert = device.user_ca.sign_ssh_user_cert(
        key.public_key(), key_id="alice", principals=[ME], ttl_seconds=TTL, extensions=extensions
    )
    return await asyncssh.connect(
        "127.0.0.1",
        device.port,
        username=ME,
        client_keys=[
            (
                asyncssh.import_private_key(private_key_to_openssh(key)),
                asyncssh.import_certificate(cert),
            )
        ],
        known_hosts=None,
        agent_path=None,
        config=None,
    )


async def test_session_ends_at_expiry_only_with_the_flag(device: Device) -> None:
    cut, kept = await asyncio.gather(_connect(device, flag=True), _connect(device, flag=False))
    try:
        started = time.monotonic()
        ended, finished = await asyncio.wait_for(
            asyncio.gather(
                cut.run("sleep 30", encoding=None, check=False),
                kept.run(f"sleep {TTL + 2}; echo done", encoding=None, check=False),
            ),
            20,
        )
        took = time.monotonic() - started
    finally:
        for conn in (cut, kept):
            conn.close()
    assert ended.exit_status == 255
    stderr = ended.stderr.decode()
    assert "remoteler: your certificate expired at " in stderr
    assert " UTC; session ended" in stderr
    assert took < 15  # sleep 30 was cut (generous bound)
    assert (finished.exit_status, finished.stdout) == (0, b"done\n")  # past its expiry
    events = [e for e in await device.outbox.batch() if e.type == "session.end"]
    ends = {e.fields["exit_status"]: e.fields.get("reason") for e in events}
    assert ends == {255: EXPIRED_REASON, 0: None}


async def test_no_port_forward_once_the_certificate_expired(device: Device) -> None:
    """In the 2 s between the sessions' end and the connection's, a new ``ssh -L``
    channel is refused with the expiry message."""
    target = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    conn = await _connect(device, flag=True)
    try:
        ended = await asyncio.wait_for(conn.run("sleep 30", encoding=None, check=False), 15)
        assert ended.exit_status == 255
        with pytest.raises(asyncssh.ChannelOpenError, match="certificate expired"):
            await conn.open_connection("127.0.0.1", port)
    finally:
        conn.close()
        target.close()
        await target.wait_closed()


async def test_no_new_session_once_the_certificate_expired(device: Device) -> None:
    """A session channel opened in those 2 s gets the expiry message too (as ``-L``
    does), not a bare refusal with no reason."""
    conn = await _connect(device, flag=True)
    try:
        ended = await asyncio.wait_for(conn.run("sleep 30", encoding=None, check=False), 15)
        assert ended.exit_status == 255
        with pytest.raises(asyncssh.ChannelOpenError, match="certificate expired"):
            await conn.run("true", check=False)
    finally:
        conn.close()


async def test_no_new_channel_once_a_lock_ended_the_sessions(tmp_path: Path) -> None:
    """The same 2 s after a lock ended the sessions: a new session or ``-L`` channel is
    refused with the lock's line (it was opened, and ran)."""
    from edge_agent.locks import LockStore
    from remoteler.locks import Lock

    ident, user_ca = local_identity(NODE)
    store = LockStore(nodes=(NODE, "truck-042"))
    outbox = await Outbox.open(tmp_path / "outbox.db", node=NODE)
    server = await start_local_listener(
        "127.0.0.1", 0, ident, lambda: {"env": "lab"}, AgentAudit(outbox, NODE), locks=store
    )
    device = Device(user_ca, server.sockets[0].getsockname()[1], outbox)
    try:
        conn = await _connect(device, flag=False)
        try:
            running = asyncio.ensure_future(conn.run("sleep 30", encoding=None, check=False))
            await asyncio.sleep(0.5)
            store.replace([Lock("0123456789ab", "user", "alice", "", time.time())])
            ended = await asyncio.wait_for(running, 15)
            assert ended.exit_status == 255
            with pytest.raises(asyncssh.ChannelOpenError, match="locked"):
                await conn.run("true", check=False)
        finally:
            conn.close()
    finally:
        server.close()
        await server.wait_closed()
        await outbox.close()
