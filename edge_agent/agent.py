"""The agent's life: keep one tunnel to the hub up for ever, serve SSH over it."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_agent.audit import AgentAudit
from edge_agent.clock import HubClock, SkewReport
from edge_agent.forwarder import run_forwarder
from edge_agent.identity import NodeIdentity
from edge_agent.locks import LockStore, serve_locks_channel
from edge_agent.outbox import Outbox
from edge_agent.serial_line import SerialConsoles
from remoteler.audit.events import EventType
from remoteler.clockskew import REPORT_THRESHOLD, sample
from remoteler.errors import RemotelerError, TrustError
from remoteler.hubconn import open_ws
from remoteler.locks import lock_digest
from remoteler.protocol import (
    FIRMWARE_KIND,
    LOCKS_KIND,
    ROTATE_KIND,
    SSH_KIND,
    TUNNEL_ALPN,
    TUNNEL_SUBPROTOCOL,
    VERSION,
)
from remoteler.tlsutil import client_context
from remoteler.wire.aio import ChannelRequest, Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits

if TYPE_CHECKING:  # imported at start by the CLI, not here (tests build bare agents)
    from edge_agent.firmware import FirmwareAgent

log = logging.getLogger("remoteler.agent")


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog, 2015)."""

    base: float = 1.0
    cap: float = 60.0
    #: a tunnel that stayed up this long resets the attempt counter (the agent
    #: lowers it to one heartbeat interval: a tunnel that carried a heartbeat works)
    stable_after: float = 30.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.cap, self.base * (2 ** min(attempt, 30))))

    def next_wait(
        self, attempt: int, uptime: float, retry_after: float | None, rng: random.Random
    ) -> tuple[float, int]:
        """Seconds to wait before reconnecting, and the attempt count to carry on with.

        ``uptime`` is how long the last tunnel was up (0 if the dial failed); once it
        reaches ``stable_after`` the count starts again, so the first redial after
        a working tunnel is reset comes within ``base`` (jittered); ``retry_after``
        is what the hub's GOAWAY asked for. A hub that says when to come back (a
        graceful restart, spreading a reconnect storm) is obeyed, capped at twice
        ``cap``, with a little jitter; that is not a failure, so ``attempt`` does
        not grow.
        """
        if uptime >= self.stable_after:
            attempt = 0
        if retry_after is not None:
            wait = min(retry_after, 2 * self.cap)
            return wait + rng.uniform(0, min(self.base, wait / 10)), attempt
        return self.delay(attempt, rng), attempt + 1


class EdgeAgent:
    def __init__(
        self,
        ident: NodeIdentity,
        labels: Mapping[str, str],
        limits: Limits | None = None,
        backoff: Backoff | None = None,
        outbox: Outbox | None = None,
        locks: LockStore | None = None,
        serial_ports: Iterable[str] = (),
    ) -> None:
        self.ident = ident
        #: the operator's serial console ports (--serial-port); pyserial loads on first use
        self.consoles = SerialConsoles(serial_ports)
        #: the hub's locks, as last pushed (kept in the data dir by the caller's store)
        self.locks = locks or LockStore(nodes=(ident.node_id, ident.name))
        self.outbox = outbox
        #: the hub's time as learnt from heartbeat answers (docs/tunnels.md, "Clock skew")
        self.clock = HubClock()
        self.locks.clock = self.clock.now  # a lock's expiry is the hub's
        self.audit = AgentAudit(outbox, ident.node_id, clock=self.clock.now)
        # The join token's labels win over --labels, here as at the hub: the device's
        # own access check (deny rules on labels) must see what the hub sees.
        self.labels = {**dict(labels), **ident.token_labels}
        self.limits = limits or Limits(send_heartbeats=True)
        self.backoff = backoff or Backoff()
        self.rng = random.Random()
        #: serves the hub's firmware roll-outs (the caller sets it: edge_agent/firmware.py)
        self.firmware: FirmwareAgent | None = None
        self.tunnel: Tunnel | None = None
        #: the tunnel is up but its tunnel.connect event not yet written
        self._connect_pending = False
        #: the retry-after the hub's GOAWAY asked for on the last tunnel (run_once sets it)
        self.retry_after: float | None = None
        #: forward mode: the device's own sshd (HOST, PORT) that ssh channels are relayed to
        self.ssh_target: tuple[str, int] | None = None
        #: monotonic time the current tunnel came up (run_once sets it), else None
        self.up_since: float | None = None

    def heartbeat_payload(self) -> dict[str, object]:
        return {
            "labels": self.labels,
            "version": VERSION,
            "name": self.ident.name,
            "ssh": "embedded" if self.ssh_target is None else "forward",
            "serial_ports": self.consoles.ports,
            # only when worth showing, and to 10 s, so that PINGs stay payload-free
            **({"clock_skew": round(skew, -1)} if (skew := self._skew()) is not None else {}),
        }

    def _skew(self) -> float | None:
        skew = self.clock.skew
        return skew if skew is not None and abs(skew) >= REPORT_THRESHOLD else None

    def on_pong(self, rtt: float, hub_time: float | None) -> None:
        """A heartbeat answer: learn the hub's time from it (RTT/2 error)."""
        wall = time.time()
        # None from a hub older than clock=1
        estimate = sample(wall - rtt, wall, hub_time) if hub_time is not None else None
        report = self.clock.observe(estimate) if estimate is not None else None
        self._announce_connect()  # stamped in hub time now that it is known
        self._report_skew(report)

    def _announce_connect(self) -> None:
        if self._connect_pending:
            self._connect_pending = False
            self.audit.emit_nowait(EventType.TUNNEL_CONNECT, hub=self.ident.hub)

    def _report_skew(self, report: SkewReport | None) -> None:
        if report is not None:
            log.warning("clock skew: %s", report.message, extra={"hub": self.ident.hub})
            self.audit.emit_nowait(
                EventType.CLOCK_SKEW,
                skew=round(report.skew, 3),
                corrected=report.corrected,
                message=report.message,
            )
        if self.tunnel is not None:
            self.tunnel.set_heartbeat_payload(self.heartbeat_payload())

    async def _status_loop(self, tunnel: Tunnel) -> None:
        """Keep the heartbeat's status current: audit backlog depth and oldest event."""
        while True:
            payload = self.heartbeat_payload()
            if self.outbox is not None:
                count, size, oldest = await self.outbox.depth()
                payload["audit"] = {"pending": count, "bytes": size, "oldest": oldest}
            tunnel.set_heartbeat_payload(payload)
            await asyncio.sleep(max(1.0, self.limits.heartbeat_interval / 2))

    async def run_forever(self) -> None:
        attempt = 0
        while True:
            self.retry_after = self.up_since = None
            try:
                await self.run_once()
                log.warning("tunnel closed; reconnecting", extra={"hub": self.ident.hub})
            except RemotelerError as err:
                log.warning("tunnel failed: %s", err, extra={"hub": self.ident.hub})
            except Exception:
                log.exception("tunnel failed unexpectedly", extra={"hub": self.ident.hub})
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # SIGTERM cancelled us while a dial swallowed the CancelledError (seen
                # once in CI: the agent redialled for 10 s until SIGKILL): stop anyway
                raise asyncio.CancelledError
            delay, attempt = self.reconnect_wait(attempt)
            log.info(
                "reconnecting",
                extra={
                    "in_s": round(delay, 2),
                    "attempt": attempt,
                    "retry_after": self.retry_after,
                },
            )
            await asyncio.sleep(delay)

    def reconnect_wait(self, attempt: int) -> tuple[float, int]:
        """:meth:`Backoff.next_wait` for the tunnel that just ended: its uptime counts
        from the handshake, and one heartbeat interval of it (when shorter than the
        backoff's ``stable_after``) resets the attempt count."""
        up = 0.0 if self.up_since is None else time.monotonic() - self.up_since
        backoff, interval = self.backoff, self.limits.heartbeat_interval
        if 0 < interval < backoff.stable_after:
            backoff = dataclasses.replace(backoff, stable_after=interval)
        return backoff.next_wait(attempt, up, self.retry_after, self.rng)

    def dial_timeout(self) -> float:
        """Seconds one dial may take: the dead-tunnel bound, within 5-15 s.

        A dial begun during an outage should not outlast the outage by much (the
        hub queues agents in a storm, so a longer wait there would not help).
        """
        bound = self.limits.heartbeat_interval * self.limits.allowed_misses
        return max(5.0, min(15.0, bound)) if bound > 0 else 15.0

    async def run_once(self) -> None:
        ident = self.ident
        ctx = client_context(ident.host_ca_pem, ident.tls_cert, ident.key_pem, [TUNNEL_ALPN])
        # The hub watches for silence with our heartbeat settings, not its own.
        path = (
            f"/v1/tunnel?heartbeat={self.limits.heartbeat_interval:g}"
            f"&misses={self.limits.allowed_misses}"
            # The lock set we hold: the hub pushes a new one only if it differs.
            f"&locks={lock_digest(self.locks.locks)}"
            # PONGs carry the hub's time (older hubs ignore it; docs/wire-protocol.md)
            "&clock=1"
        )
        try:
            ws = await open_ws(
                ident.hub,
                path,
                ctx,
                subprotocol=TUNNEL_SUBPROTOCOL,
                max_size=self.limits.max_frame_bytes + 1024,
                timeout=self.dial_timeout(),
            )
        except TrustError as err:  # a wrong clock? was the hub's CA rotated meanwhile?
            from edge_agent.clockdial import dial_despite_clock

            # The ping's time that verified the hub's certificate is unauthenticated:
            # it is not taken as the skew (a forger would set the device's time for
            # its certificates and audit trail); the tunnel's first PONG, one round
            # trip away, is (docs/tunnels.md, "Clock skew").
            ws, _unverified = await dial_despite_clock(
                ident,
                self.clock,
                err,
                path,
                timeout=self.dial_timeout(),
                max_size=self.limits.max_frame_bytes + 1024,
            )
        core = Connection(Role.DIALER, self.limits, now=time.monotonic())
        core.ping_at_start = True  # the hub's time (and our status) at once
        tunnel = Tunnel(ws, core, on_channel=self.on_channel, on_pong=self.on_pong)
        tunnel.set_heartbeat_payload(self.heartbeat_payload())
        self.tunnel = tunnel
        self.up_since = time.monotonic()
        log.info("tunnel up", extra={"hub": ident.hub, "node_id": ident.node_id})
        # tunnel.connect waits for the first heartbeat answer (one round trip: the
        # first PING leaves at once), which tells the hub's time on a wrong clock
        self._connect_pending = True
        helpers = [asyncio.ensure_future(self._status_loop(tunnel))]
        if self.outbox is not None:
            helpers.append(asyncio.ensure_future(run_forwarder(self.outbox, tunnel)))
        try:
            await tunnel.run()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self.tunnel = None
            self.retry_after = tunnel.retry_after
            self._announce_connect()  # closed before any answer: still on record
            self.audit.emit_nowait(
                EventType.TUNNEL_DISCONNECT,
                hub=ident.hub,
                reason=str(tunnel.close_reason)[:200],
            )
            log.info(
                "tunnel down",
                extra={
                    "code": getattr(tunnel.close_code, "name", None),
                    "reason": tunnel.close_reason,
                },
            )

    async def on_channel(self, request: ChannelRequest) -> None:
        if request.kind == ROTATE_KIND:  # new certificates and CAs from a CA rotation
            from edge_agent.rotate import serve_rotate_channel

            await serve_rotate_channel(request.accept(), self.ident)
            return
        if request.kind == LOCKS_KIND:  # the hub's lock set, whenever it changes
            await serve_locks_channel(request.accept(), self.locks)
            return
        if request.kind == FIRMWARE_KIND:  # a roll-out (docs/firmware-rollouts.md)
            if self.firmware is None:
                request.reject(OpenFailure.UNKNOWN_KIND, "firmware updates are off on this agent")
                return
            await self.firmware.serve(request.accept())
            return
        if request.kind != SSH_KIND:
            request.reject(OpenFailure.UNKNOWN_KIND, "unknown channel kind")
            return
        if self.ssh_target is not None:  # forward mode: no asyncssh in this process at all
            from edge_agent.target import serve_target_channel

            await serve_target_channel(request, *self.ssh_target, self.audit, self.locks)
            return
        # asyncssh is imported on the first session, not at start-up: an idle agent
        # stays ~15 MiB smaller on small boards (bench agent_footprint).
        from edge_agent.sshd import serve_ssh_channel

        channel = request.accept()
        await serve_ssh_channel(
            channel,
            self.ident,
            lambda: self.labels,
            self.audit,
            self.locks,
            self.consoles,
            clock=self.clock,
        )
