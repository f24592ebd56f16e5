"""In-process SSH connections for the benchmarks: through the hub, or direct to TCP."""

from __future__ import annotations

from typing import Any

import asyncssh

from bench.fixtures import LOGIN, NODE, Rig
from remoteler.ca import private_key_to_openssh
from remoteler.identity import read_identity_file
from remoteler.sshio import CIPHERS, SSH_MAX_PACKET, SSH_WINDOW
from tsh.ssh import host_ca_known_hosts, open_ssh


async def connect_via_hub(rig: Rig) -> Any:
    return await open_ssh(rig.cluster.addr, read_identity_file(rig.identity), LOGIN, NODE)


async def connect_direct(rig: Rig, port: int) -> Any:
    ident = read_identity_file(rig.identity)
    return await asyncssh.connect(
        "127.0.0.1",
        port,
        config=None,
        username=LOGIN,
        client_keys=[
            (
                asyncssh.import_private_key(private_key_to_openssh(ident.key)),
                asyncssh.import_certificate(ident.ssh_cert),
            )
        ],
        known_hosts=asyncssh.import_known_hosts(
            host_ca_known_hosts(ident).replace("*", "127.0.0.1")
        ),
        host_key_alias=NODE,
        agent_path=None,
        encryption_algs=CIPHERS,
        window=SSH_WINDOW,
        max_pktsize=SSH_MAX_PACKET,
    )
