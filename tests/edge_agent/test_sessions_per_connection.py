"""Session channels per SSH connection on the device's embedded server: at most
``SESSIONS_PER_CONNECTION`` (as OpenSSH's MaxSessions), since the hub's
``max_sessions`` counts connections and one connection multiplexes channels.
A real loopback ``--local-listen`` socket and an asyncssh client."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh
import pytest
from test_cert_expiry import ME, Device, device

from remoteler.access import ACCESS_ROLE, RULES_EXTENSION, encode_rules, resolve_rules
from remoteler.ca import DEFAULT_USER_EXTENSIONS, generate_private_key, private_key_to_openssh
from remoteler.roleopts import SESSIONS_PER_CONNECTION, SESSIONS_PER_CONNECTION_REFUSAL

__all__ = ["device"]  # the fixture, shared with test_cert_expiry


async def _connect(device: Device) -> Any:
    key = generate_private_key()
    extensions = dict(DEFAULT_USER_EXTENSIONS)
    extensions[RULES_EXTENSION] = encode_rules(resolve_rules([ACCESS_ROLE], [ME]))
    cert = device.user_ca.sign_ssh_user_cert(
        key.public_key(), key_id="alice", principals=[ME], ttl_seconds=600, extensions=extensions
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


async def test_sessions_per_connection_are_capped(device: Device) -> None:
    async with await _connect(device) as conn:
        held = [
            await conn.create_process("cat", encoding=None) for _ in range(SESSIONS_PER_CONNECTION)
        ]
        with pytest.raises(asyncssh.ChannelOpenError) as exc:
            await conn.create_process("cat", encoding=None)
        assert exc.value.reason == SESSIONS_PER_CONNECTION_REFUSAL
        # an ended session gives its place back
        held[0].stdin.write_eof()
        await asyncio.wait_for(held[0].wait_closed(), 10)
        result = await asyncio.wait_for(conn.run("echo again", check=False), 10)
        assert result.stdout == "again\n"
        for process in held[1:]:
            process.stdin.write_eof()
        await asyncio.wait_for(asyncio.gather(*(p.wait_closed() for p in held[1:])), 10)
