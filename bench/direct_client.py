"""tsh's session code connecting straight to a TCP port (no hub): the reference client."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import asyncssh

from remoteler.ca import private_key_to_openssh
from remoteler.identity import read_identity_file
from remoteler.sshio import CIPHERS, SSH_MAX_PACKET, SSH_WINDOW
from tsh.ssh import host_ca_known_hosts, run_session


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identity", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cipher")
    parser.add_argument("target")
    parser.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    ident = read_identity_file(Path(args.identity))
    login, _, node = args.target.rpartition("@")
    conn = await asyncssh.connect(
        "127.0.0.1",
        args.port,
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
        encryption_algs=[args.cipher] if args.cipher else CIPHERS,
        window=SSH_WINDOW,
        max_pktsize=SSH_MAX_PACKET,
    )
    try:
        return await run_session(conn, args.cmd, None)
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
