"""The agent's SSH server (same classes, same host certificate) on a loopback TCP port."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import asyncssh

from edge_agent.identity import NodeIdentity
from edge_agent.sshd import NodeSSHServer
from remoteler import malloc
from remoteler.ca import private_key_to_openssh
from remoteler.sshserver import SERVER_OPTIONS


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agent-data", required=True)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    ident = NodeIdentity.load(Path(args.agent_data))
    key = asyncssh.import_private_key(private_key_to_openssh(ident.key))
    cert = asyncssh.import_certificate(ident.ssh_cert)
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_factory=lambda: NodeSSHServer(ident.user_ca_ssh, {}),
        server_host_keys=[(key, cert)],
        config=None,
        **SERVER_OPTIONS,  # the agent's own server settings: only the hub path differs
    )
    port = server.sockets[0].getsockname()[1]
    Path(args.port_file).write_text(str(port))
    await server.wait_closed()


if __name__ == "__main__":
    malloc.tune()  # as tsh and edge-agent do at start
    asyncio.run(main())
