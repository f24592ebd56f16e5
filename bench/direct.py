"""Connect tsh's SSH client code straight to a TCP port (no hub): the reference path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh

from remoteler.ca import private_key_to_openssh
from remoteler.identity import read_identity_file
from remoteler.sshio import CIPHERS, SSH_MAX_PACKET, SSH_WINDOW
from tsh.ssh import host_ca_known_hosts


async def connect_direct_tcp(
    identity: Path, port: int, login: str, node: str, ciphers: list[str] | None = None
) -> Any:
    ident = read_identity_file(identity)
    return await asyncssh.connect(
        "127.0.0.1",
        port,
        config=None,
        username=login,
        client_keys=[
            (
                asyncssh.import_private_key(private_key_to_openssh(ident.key)),
                asyncssh.import_certificate(ident.ssh_cert),
            )
        ],
        known_hosts=asyncssh.import_known_hosts(
            host_ca_known_hosts(ident).replace("*", "127.0.0.1")
        ),
        host_key_alias=node,
        agent_path=None,
        encryption_algs=ciphers or CIPHERS,
        window=SSH_WINDOW,
        max_pktsize=SSH_MAX_PACKET,
    )
