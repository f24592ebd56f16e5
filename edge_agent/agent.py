"""The agent's life: keep one tunnel to the hub up for ever, serve SSH over it."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from edge_agent.identity import NodeIdentity
from edge_agent.sshd import serve_ssh_channel
from remoteler.errors import RemotelerError
from remoteler.hubconn import open_ws
from remoteler.tlsutil import client_context
from remoteler.wire.aio import ChannelRequest, Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits

log = logging.getLogger("remoteler.agent")

TUNNEL_SUBPROTOCOL = "remoteler.tunnel.v1"
VERSION = "0.1.0"


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog, 2015)."""

    base: float = 1.0
    cap: float = 60.0
    #: a tunnel that stayed up this long resets the attempt counter
    stable_after: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap, self.base * (2 ** min(attempt, 30))))


class EdgeAgent:
    def __init__(
        self,
        ident: NodeIdentity,
        labels: Mapping[str, str],
        limits: Limits | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.ident = ident
        self.labels = dict(labels)  # the hub adds the join token's labels, which win
        self.limits = limits or Limits(send_heartbeats=True)
        self.backoff = backoff or Backoff()
        self.rng = random.Random()
        self.tunnel: Tunnel | None = None
        self.connected = asyncio.Event()
        self._tasks: set[asyncio.Future[None]] = set()

    def heartbeat_payload(self) -> dict[str, object]:
        return {"labels": self.labels, "version": VERSION, "name": self.ident.name}

    async def run_forever(self) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self.run_once()
                log.warning("tunnel closed; reconnecting", extra={"hub": self.ident.hub})
            except RemotelerError as err:
                log.warning("tunnel failed: %s", err, extra={"hub": self.ident.hub})
            except Exception:
                log.exception("tunnel failed unexpectedly", extra={"hub": self.ident.hub})
            if time.monotonic() - started >= self.backoff.stable_after:
                attempt = 0
            delay = self.backoff.delay(attempt, self.rng)
            attempt += 1
            log.info("reconnecting", extra={"in_s": round(delay, 2), "attempt": attempt})
            await asyncio.sleep(delay)

    async def run_once(self) -> None:
        ident = self.ident
        ctx = client_context(ident.host_ca_pem, ident.tls_cert, ident.key_pem)
        ws = await open_ws(
            ident.hub,
            # The hub watches for silence with our heartbeat settings, not its own.
            f"/v1/tunnel?heartbeat={self.limits.heartbeat_interval:g}"
            f"&misses={self.limits.allowed_misses}",
            ctx,
            subprotocol=TUNNEL_SUBPROTOCOL,
            max_size=self.limits.max_frame_bytes + 1024,
        )
        core = Connection(Role.DIALER, self.limits, now=time.monotonic())
        tunnel = Tunnel(ws, core, on_channel=self.on_channel)
        tunnel.set_heartbeat_payload(self.heartbeat_payload())
        self.tunnel = tunnel
        self.connected.set()
        log.info("tunnel up", extra={"hub": ident.hub, "node_id": ident.node_id})
        try:
            await tunnel.run()
        finally:
            self.connected.clear()
            self.tunnel = None
            log.info(
                "tunnel down",
                extra={
                    "code": getattr(tunnel.close_code, "name", None),
                    "reason": tunnel.close_reason,
                },
            )

    async def on_channel(self, request: ChannelRequest) -> None:
        if request.kind != "ssh":
            request.reject(OpenFailure.UNKNOWN_KIND, "unknown channel kind")
            return
        channel = request.accept()
        await serve_ssh_channel(channel, self.ident, lambda: self.labels)
