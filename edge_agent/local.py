"""``--local-listen``: the same SSH server on a local address, for a technician on site
when the device has no uplink. Certificates are checked exactly as through the
tunnel, with no hub needed, and everything is audited through the same outbox.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping

from edge_agent.audit import AgentAudit
from edge_agent.clock import HubClock
from edge_agent.identity import NodeIdentity
from edge_agent.locks import LockStore
from remoteler.sshio import StreamPipe

log = logging.getLogger("remoteler.agent.local")


async def start_local_listener(
    host: str,
    port: int,
    ident: NodeIdentity,
    labels: Callable[[], Mapping[str, str]],
    audit: AgentAudit,
    locks: LockStore | None = None,
    clock: HubClock | None = None,
) -> asyncio.Server:
    """``clock``: the agent's hub clock, so that certificates are judged at the hub's
    time as through the tunnel (the last skew learnt, even while the hub is away)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from edge_agent.sshd import serve_ssh  # asyncssh on first use, as for the tunnel

        peer = writer.get_extra_info("peername") or ("?", 0)
        meta = {"remote_addr": str(peer[0]), "session_id": str(uuid.uuid4()), "via": "local"}
        log.info("local ssh connection", extra={"peer": peer[0], "session_id": meta["session_id"]})
        try:
            await serve_ssh(
                StreamPipe(reader, writer), meta, ident, labels, audit, locks, clock=clock
            )
        except Exception:
            log.exception("local ssh connection failed")
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    addr = server.sockets[0].getsockname()
    log.info("local ssh listening", extra={"addr": f"{addr[0]}:{addr[1]}"})
    return server
