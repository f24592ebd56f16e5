"""A device's refusal text reaches the operator's terminal only as printable text.

A hostile (or compromised) device chooses the reason of a refused session channel;
``tsh ssh`` and ``tsh console`` print it on their one error line (tsh.ssh.node_errors,
the C6 "login does not exist" path). A real asyncssh server on loopback plays the
device; the client is asyncssh as in tsh.
"""

from __future__ import annotations

from typing import Any

import asyncssh

from remoteler.errors import NodeError
from tsh.ssh import node_errors

EVIL = "\x1b]52;c;ZXZpbA==\x07\x1b[2J\u202e\nsecond line"  # OSC 52, clear screen, RLO, LF


class _Device(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: the algorithms and auth are tested elsewhere

    def session_requested(self) -> bool:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, EVIL)


async def test_a_refused_sessions_reason_is_printed_printable_only() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[key], server_factory=_Device)
    err: Any = None
    try:
        port = server.sockets[0].getsockname()[1]
        async with asyncssh.connect(
            "127.0.0.1", port, username="pi", known_hosts=None, agent_path=None, config=None
        ) as conn:
            try:
                with node_errors("dev1", "hint"):
                    await conn.create_process("true")
            except NodeError as exc:
                err = exc
    finally:
        server.close()
        await server.wait_closed()
    assert isinstance(err, NodeError), err
    line = str(err)
    assert line.isprintable(), repr(line)
    assert "52;c;ZXZpbA==" in line and "second line" in line  # the text, controls as '?'
