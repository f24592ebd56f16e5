"""User certificates judged at the hub's time on a device with a wrong clock
(edge_agent/sshd.py with edge_agent/clock.py): the embedded SSH server over a real
loopback ``--local-listen`` socket, real asyncssh on both ends, no hub.

The device here is a day *ahead* of its hub: the hub issued the certificate at
its own time (a day before this machine's clock), so by the local clock it
expired long ago.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from localdevice import local_identity

from edge_agent.audit import AgentAudit
from edge_agent.clock import HubClock
from edge_agent.local import start_local_listener
from edge_agent.outbox import Outbox
from remoteler.access import ACCESS_ROLE, RULES_EXTENSION, encode_rules, resolve_rules
from remoteler.ca import (
    DEFAULT_USER_EXTENSIONS,
    CertAuthority,
    generate_private_key,
    private_key_to_openssh,
)
from remoteler.clockskew import SkewSample

ME = pwd.getpwuid(os.geteuid()).pw_name
NODE = "00000000-0000-4000-8000-0000000000c1"
DAY = 86400


async def _device(tmp_path: Path, clock: HubClock) -> tuple[CertAuthority, Any, Outbox]:
    ident, user_ca = local_identity(NODE)
    outbox = await Outbox.open(tmp_path / "outbox.db", node=NODE)
    audit = AgentAudit(outbox, NODE, clock=clock.now)
    server = await start_local_listener(
        "127.0.0.1", 0, ident, lambda: {"env": "lab"}, audit, clock=clock
    )
    return user_ca, server, outbox


async def _login(user_ca: CertAuthority, port: int, banners: list[str]) -> Any:
    """Log in with a 12 h certificate the hub issued "now" by its clock (a day ago here)."""
    key = generate_private_key()
    extensions = dict(DEFAULT_USER_EXTENSIONS)
    extensions[RULES_EXTENSION] = encode_rules(resolve_rules([ACCESS_ROLE], [ME]))
    cert = user_ca.sign_ssh_user_cert(
        key.public_key(),
        key_id="alice",
        principals=[ME],
        ttl_seconds=12 * 3600,
        now=int(time.time()) - DAY,
        extensions=extensions,
    )

    class Client(asyncssh.SSHClient):
        def auth_banner_received(self, msg: str, lang: str) -> None:
            banners.append(msg)

    return await asyncssh.connect(
        "127.0.0.1",
        port,
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
        client_factory=Client,
    )


@pytest.fixture
async def ahead(tmp_path: Path) -> AsyncIterator[tuple[HubClock, CertAuthority, int, Outbox]]:
    clock = HubClock()  # bound: the default 24 h
    clock.observe(SkewSample(float(DAY), 0.001))  # learnt from the hub's heartbeat answers
    user_ca, server, outbox = await _device(tmp_path, clock)
    try:
        yield clock, user_ca, server.sockets[0].getsockname()[1], outbox
    finally:
        server.close()
        await server.wait_closed()
        await outbox.close()


async def test_a_day_ahead_accepts_a_certificate_valid_at_hub_time(
    ahead: tuple[HubClock, CertAuthority, int, Outbox],
) -> None:
    _, user_ca, port, outbox = ahead
    conn = await _login(user_ca, port, [])
    try:
        result = await conn.run("echo ok", check=False)
        assert result.stdout == "ok\n"
    finally:
        conn.close()
        await conn.wait_closed()
    events = [e for e in await outbox.batch(100) if e.type == "session.start"]
    assert events and abs(events[0].time - (time.time() - DAY)) < 60  # stamped in hub time


async def test_beyond_the_bound_the_refusal_names_the_skew(
    ahead: tuple[HubClock, CertAuthority, int, Outbox],
) -> None:
    clock, user_ca, port, outbox = ahead
    clock.bound = 3600.0  # this device corrects an hour at most: the local clock rules
    banners: list[str] = []
    with pytest.raises(asyncssh.PermissionDenied):
        await _login(user_ca, port, banners)
    assert any("this device's clock is 24 h ahead of the hub's" in b for b in banners), banners
    refusals = [e for e in await outbox.batch(100) if e.type == "auth.failed"]
    assert refusals and "24 h ahead" in refusals[-1].fields["reason"]
