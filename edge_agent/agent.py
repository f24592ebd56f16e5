"""The agent's life: serve SSH, locks, rotations, roll-outs and audit over tunnels
to the cluster's hubs, for ever.

:class:`EdgeAgent` puts together the node's identity, its audit trail, the hub's
locks, serial consoles, firmware roll-outs and the channels a hub opens; keeping
the tunnels up (one per slot, to different hubs) is
:class:`edge_agent.tunnel_slots.TunnelSlots`' job (docs/edge-agent.md, "Several
hubs"). Every tunnel serves the same channels and sends its own heartbeats; the
audit outbox is forwarded over one of them at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from edge_agent.audit import AgentAudit
from edge_agent.clock import HubClock, SkewReport
from edge_agent.forwarder import forward_on_any
from edge_agent.hubchannel import serve_hubs_channel
from edge_agent.hubset import HubSet
from edge_agent.identity import NodeIdentity
from edge_agent.locks import LockStore, serve_locks_channel
from edge_agent.outbox import Outbox
from edge_agent.resume import ResumeRegistry
from edge_agent.serial_line import SerialConsoles
from edge_agent.tunnel_slots import Backoff, TunnelRun, TunnelSlots
from remoteler.audit.events import EventType
from remoteler.ca.sshcert import parse_certificate
from remoteler.ca.x509 import cert_not_after
from remoteler.caps import agent_caps
from remoteler.clockskew import REPORT_THRESHOLD, sample
from remoteler.errors import TrustError
from remoteler.hubconn import open_ws
from remoteler.hublist import HubList
from remoteler.locks import lock_digest
from remoteler.protocol import (
    FIRMWARE_KIND,
    HUBS_KIND,
    LOCKS_KIND,
    ROTATE_KIND,
    SSH_KIND,
    TUNNEL_ALPN,
    TUNNEL_SUBPROTOCOL,
    VERSION,
)
from remoteler.sshio import BytePipe, ChannelPipe
from remoteler.tlsutil import client_context
from remoteler.wire.aio import ChannelRequest, Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.limits import Limits

if TYPE_CHECKING:  # imported at start by the CLI, not here (tests build bare agents)
    from edge_agent.firmware import FirmwareAgent

__all__ = ["HUB_ID_WAIT", "Backoff", "EdgeAgent", "TunnelRun"]

log = logging.getLogger("remoteler.agent")

#: Seconds after the first heartbeat answer that ``tunnel.connect`` waits for the
#: hub's list to name the hub (older hubs send none).
HUB_ID_WAIT = 3.0


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
        #: resumable sessions, live and detached (docs/resume.md); the CLI sets the grace
        self.resume = ResumeRegistry(self.audit)
        #: forward mode: the device's own sshd (HOST, PORT) that ssh channels are relayed to
        self.ssh_target: tuple[str, int] | None = None
        #: the tunnels, one per slot (where each dials: ``slots.hubset``)
        self.slots = TunnelSlots(self, ident.hub, self.limits, self.backoff, self.rng)
        #: the tunnel the audit outbox is forwarded over now, if any
        self.forwarding: Tunnel | None = None
        #: one CA rotation update at a time (two hubs may push the same one at once)
        self._rotation = asyncio.Lock()

    # -- the tunnels up now ---------------------------------------------------------
    @property
    def hubset(self) -> HubSet:
        return self.slots.hubset

    @property
    def runs(self) -> dict[int, TunnelRun]:
        """Each slot's current or last tunnel."""
        return self.slots.runs

    @property
    def tunnels(self) -> dict[int, Tunnel]:
        """Slot -> tunnel, for every tunnel up now."""
        return self.slots.tunnels

    @property
    def tunnel(self) -> Tunnel | None:
        """A tunnel that is up (the lowest slot's), else None."""
        return next(iter(self.tunnels.values()), None)

    def connect_pending(self, slot: int = 0) -> bool:
        """True while ``slot``'s tunnel is up and its ``tunnel.connect`` not yet written."""
        run = self.runs.get(slot)
        return run is not None and run.connect_pending

    async def close_tunnels(self, reason: str) -> None:
        """Close every tunnel with a GOAWAY (an agent stopping); waits a few seconds."""
        await self.slots.close_all(reason)

    async def run_forever(self) -> None:
        """Keep the tunnels the hub list asks for up and forward the audit outbox,
        until cancelled (then every tunnel is closed with a GOAWAY first)."""
        forwarder = None
        if self.outbox is not None:
            forwarder = asyncio.ensure_future(self._forward())
        slots = asyncio.ensure_future(self.slots.run())
        try:
            await asyncio.wait([slots])
            slots.result()  # it ends only by a bug
        finally:
            # The forwarder stops first: the tunnel.disconnect events the goodbyes
            # write stay in the outbox for the next start (not half sent meanwhile).
            if forwarder is not None:
                forwarder.cancel()
                await asyncio.gather(forwarder, return_exceptions=True)
            slots.cancel()
            await asyncio.gather(slots, return_exceptions=True)

    async def run_once(self, slot: int = 0) -> None:
        """Dial where the hub set says for ``slot``, serve the tunnel until it ends."""
        await self.slots.run_once(slot)

    # -- what the slots ask of the agent (edge_agent.tunnel_slots.SlotHost) ------------
    async def dial(self, addr: str, timeout: float) -> Any:
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
        max_size = self.limits.max_frame_bytes + 1024
        try:
            return await open_ws(
                addr, path, ctx, subprotocol=TUNNEL_SUBPROTOCOL, max_size=max_size, timeout=timeout
            )
        except TrustError as err:  # a wrong clock? was the hub's CA rotated meanwhile?
            from edge_agent.clockdial import dial_despite_clock

            # The ping's time that verified the hub's certificate is unauthenticated:
            # it is not taken as the skew (a forger would set the device's time for
            # its certificates and audit trail); the tunnel's first PONG, one round
            # trip away, is (docs/tunnels.md, "Clock skew").
            ws, _unverified = await dial_despite_clock(
                ident, self.clock, err, path, timeout=timeout, max_size=max_size, hub=addr
            )
            return ws

    def tunnel_up(self, run: TunnelRun) -> None:
        log.info("tunnel up", extra={**self.slots.fields(run.slot), "node_id": self.ident.node_id})
        # tunnel.connect waits for the first heartbeat answer (one round trip: the
        # first PING leaves at once), which tells the hub's time on a wrong clock
        run.connect_pending = True

    def tunnel_down(self, run: TunnelRun) -> None:
        tunnel = run.tunnel
        assert tunnel is not None
        self._announce_connect(run)  # closed before any answer: still on record
        self.audit.emit_nowait(
            EventType.TUNNEL_DISCONNECT,
            hub=run.addr,
            **({"hub_id": run.hub_id} if run.hub_id is not None else {}),
            reason=str(tunnel.close_reason)[:200],
        )
        log.info(
            "tunnel down",
            extra={
                **self.slots.fields(run.slot),
                "code": getattr(tunnel.close_code, "name", None),
                "reason": tunnel.close_reason,
            },
        )

    # -- heartbeats ------------------------------------------------------------------
    def heartbeat_payload(self) -> dict[str, object]:
        return {
            "labels": self.labels,
            "version": VERSION,
            "name": self.ident.name,
            "ssh": "embedded" if self.ssh_target is None else "forward",
            "serial_ports": self.consoles.ports,
            # remoteler/caps.py; an older agent sends none. Resumes when on_channel does:
            "caps": agent_caps(resume=self.resume.grace > 0),
            "cert_expires": _cert_expires(self.ident.ssh_cert, self.ident.tls_cert),
            # only when worth showing, and to 10 s, so that PINGs stay payload-free
            **({"clock_skew": round(skew, -1)} if (skew := self._skew()) is not None else {}),
        }

    def _skew(self) -> float | None:
        skew = self.clock.skew
        return skew if skew is not None and abs(skew) >= REPORT_THRESHOLD else None

    def on_pong(self, rtt: float, hub_time: float | None, run: TunnelRun | None = None) -> None:
        """A heartbeat answer: learn the hub's time from it (RTT/2 error)."""
        wall = time.time()
        # None from a hub older than clock=1
        estimate = sample(wall - rtt, wall, hub_time) if hub_time is not None else None
        report = self.clock.observe(estimate) if estimate is not None else None
        if run is not None and run.connect_pending and run.connect_at is None:
            run.connect_at = self.clock.now()  # stamped in hub time now that it is known
            if run.hub_id is None:  # wait a little for the hub's list to name the hub
                loop = asyncio.get_running_loop()
                run.connect_timer = loop.call_later(HUB_ID_WAIT, self._announce_connect, run)
            else:
                self._announce_connect(run)
        self._report_skew(report)
        if run is not None and run.tunnel is not None and report is None:
            run.tunnel.set_heartbeat_payload(self.heartbeat_payload())

    def _announce_connect(self, run: TunnelRun) -> None:
        if not run.connect_pending:
            return
        run.connect_pending = False
        if run.connect_timer is not None:
            run.connect_timer.cancel()
        self.audit.emit_nowait_at(
            run.connect_at,
            EventType.TUNNEL_CONNECT,
            hub=run.addr,
            **({"hub_id": run.hub_id} if run.hub_id is not None else {}),
        )

    def _report_skew(self, report: SkewReport | None) -> None:
        if report is not None:
            log.warning("clock skew: %s", report.message, extra={"hub": self.ident.hub})
            self.audit.emit_nowait(
                EventType.CLOCK_SKEW,
                skew=round(report.skew, 3),
                corrected=report.corrected,
                message=report.message,
            )
            for tunnel in self.tunnels.values():
                tunnel.set_heartbeat_payload(self.heartbeat_payload())

    async def keep_status(self, tunnel: Tunnel) -> None:
        """Keep the heartbeat's status current: audit backlog depth and oldest event."""
        while True:
            payload = self.heartbeat_payload()
            if self.outbox is not None:
                count, size, oldest = await self.outbox.depth()
                payload["audit"] = {"pending": count, "bytes": size, "oldest": oldest}
            tunnel.set_heartbeat_payload(payload)
            await asyncio.sleep(max(1.0, self.limits.heartbeat_interval / 2))

    # -- audit -------------------------------------------------------------------------
    async def _forward(self) -> None:
        """Forward the audit outbox over one tunnel at a time (the longest up)."""
        assert self.outbox is not None

        def on(tunnel: Tunnel | None) -> None:
            self.forwarding = tunnel

        await forward_on_any(
            self.outbox, self.slots.forwarding_order, self.slots.tunnels_changed, on
        )

    # -- channels from the hub -------------------------------------------------------------
    def _learnt(self, run: TunnelRun | None, hubs: HubList) -> None:
        """A hub pushed its list on ``run``'s tunnel: that tunnel is on ``hubs.hub_id``."""
        self.slots.learnt(run, hubs)
        if run is not None and run.connect_at is not None:  # its first answer came
            self._announce_connect(run)

    async def on_channel(self, request: ChannelRequest, run: TunnelRun | None = None) -> None:
        if request.kind == HUBS_KIND:  # the cluster's hub list (docs/edge-agent.md)
            await serve_hubs_channel(request.accept(), lambda hubs: self._learnt(run, hubs))
            return
        if request.kind == ROTATE_KIND:  # new certificates and CAs from a CA rotation
            from edge_agent.rotate import serve_rotate_channel

            channel = request.accept()
            async with self._rotation:  # every hub of a cluster may push the same update
                await serve_rotate_channel(channel, self.ident)
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
        # A tunnel carrying a user's session is never closed as a duplicate: count it.
        if run is not None:
            run.sessions += 1
        try:
            meta = request.meta if isinstance(request.meta, dict) else {}
            if meta.get("resume") is not None and self.ssh_target is None and self.resume.grace:
                await self.resume.serve(request, self._serve_ssh_pipe)  # docs/resume.md
            else:
                await self._serve_ssh(request)
        finally:
            if run is not None:
                run.sessions -= 1
                if not run.sessions:
                    self.slots.close_duplicates()

    async def _serve_ssh_pipe(self, pipe: BytePipe, meta: Mapping[str, Any]) -> None:
        """The embedded SSH server over ``pipe``: a channel's, or a resumable session's."""
        # asyncssh is imported on the first session, not at start-up: an idle agent
        # stays ~15 MiB smaller on small boards (bench agent_footprint).
        from edge_agent.sshd import serve_ssh

        await serve_ssh(
            pipe,
            meta,
            self.ident,
            lambda: self.labels,
            self.audit,
            self.locks,
            self.consoles,
            clock=self.clock,
        )

    async def _serve_ssh(self, request: ChannelRequest) -> None:
        if self.ssh_target is not None:  # forward mode: no asyncssh in this process at all
            from edge_agent.target import serve_target_channel

            resume = self.resume if self.resume.grace else None  # docs/resume.md
            await serve_target_channel(request, *self.ssh_target, self.audit, self.locks, resume)
            return
        channel = request.accept()
        try:
            meta = channel.meta if isinstance(channel.meta, dict) else {}
            await self._serve_ssh_pipe(ChannelPipe(channel), meta)
        finally:
            channel.close()


@functools.lru_cache(maxsize=4)
def _cert_expires(ssh_cert: str, tls_cert: bytes) -> int | None:
    """When the node's certificates stop working: the earlier of its tunnel (x509)
    certificate's end and its SSH host certificate's ``valid_before`` (host certificates
    are usually valid forever). For heartbeats; parsed once per certificate pair."""
    ends: list[int] = []
    # a damaged file is reported elsewhere; the heartbeat goes on without it
    with contextlib.suppress(Exception):
        ends.append(int(cert_not_after(tls_cert).timestamp()))
    with contextlib.suppress(Exception):
        before = int(parse_certificate(ssh_cert).valid_before)
        if before < 2**63:  # 2**64-1: "forever"
            ends.append(before)
    return min(ends) if ends else None
