"""The agent's life: keep tunnels to the cluster's hubs up for ever, serve SSH over them.

One tunnel per *slot*; slot 0 always runs, more start when a hub's list asks
for more (``connection_count``) and stop when it asks for fewer. Where each slot
dials is :class:`edge_agent.hubset.HubSet`'s decision (docs/edge-agent.md,
"Several hubs"); every tunnel serves the same channels, sends its own
heartbeats, and the audit outbox is forwarded over one of them at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge_agent.audit import AgentAudit
from edge_agent.clock import HubClock, SkewReport
from edge_agent.forwarder import forward_on_any
from edge_agent.hubchannel import serve_hubs_channel
from edge_agent.hubset import HubSet
from edge_agent.identity import NodeIdentity
from edge_agent.locks import LockStore, serve_locks_channel
from edge_agent.outbox import Outbox
from edge_agent.serial_line import SerialConsoles
from remoteler.audit.events import EventType
from remoteler.clockskew import REPORT_THRESHOLD, sample
from remoteler.errors import RemotelerError, TrustError
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
from remoteler.tlsutil import client_context
from remoteler.wire.aio import ChannelRequest, Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits

if TYPE_CHECKING:  # imported at start by the CLI, not here (tests build bare agents)
    from edge_agent.firmware import FirmwareAgent

log = logging.getLogger("remoteler.agent")

#: Seconds a slot waits at most before moving off a hub that sent it away (a
#: draining hub's GOAWAY with a retry-after) when another listed hub is free.
MOVE_JITTER = 1.0
#: Seconds after the first heartbeat answer that ``tunnel.connect`` waits for the
#: hub's list to name the hub (older hubs send none).
HUB_ID_WAIT = 3.0
#: Seconds a tunnel of a stopping slot, or of a stopping agent, has to say goodbye.
CLOSE_TIMEOUT = 5.0


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


@dataclass
class TunnelRun:
    """One slot's current (or last) tunnel."""

    slot: int
    #: the address dialled
    addr: str
    tunnel: Tunnel | None = None
    #: monotonic time the tunnel came up, else None (the dial failed)
    up_since: float | None = None
    #: the hub it is on, from the hub's list; None until then (or from an older hub)
    hub_id: str | None = None
    #: what the hub's GOAWAY asked for, once the tunnel ended
    retry_after: float | None = None
    #: tunnel.connect: not yet written; the time (hub-corrected) it is stamped with
    connect_pending: bool = False
    connect_at: float | None = None
    connect_timer: asyncio.TimerHandle | None = field(default=None, repr=False)


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
        #: forward mode: the device's own sshd (HOST, PORT) that ssh channels are relayed to
        self.ssh_target: tuple[str, int] | None = None
        #: where each slot dials: the bootstrap address is the identity's hub (--hub)
        self.hubset = HubSet(ident.hub)
        #: each slot's current or last tunnel
        self.runs: dict[int, TunnelRun] = {}
        #: seconds an extra slot (one a hub list asked for) waits, at most, before its
        #: first dial: a list reaching a whole fleet does not make it dial at once
        self.extra_slot_jitter = 5.0
        #: set whenever a tunnel comes up or goes down
        self.tunnels_changed = asyncio.Event()
        #: the tunnel the audit outbox is forwarded over now, if any
        self.forwarding: Tunnel | None = None
        self._wanted_changed = asyncio.Event()
        #: closes of duplicate tunnels in flight
        self._background: set[asyncio.Future[None]] = set()
        #: one CA rotation update at a time (two hubs may push the same one at once)
        self._rotation = asyncio.Lock()

    # -- the tunnels up now ---------------------------------------------------------
    @property
    def tunnels(self) -> dict[int, Tunnel]:
        """Slot -> tunnel, for every tunnel up now."""
        return {
            slot: run.tunnel
            for slot, run in sorted(self.runs.items())
            if run.tunnel is not None and not run.tunnel.closed.is_set()
        }

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
        tunnels = list(self.tunnels.values())
        if tunnels:
            await asyncio.wait(
                [asyncio.ensure_future(t.close(reason=reason)) for t in tunnels],
                timeout=CLOSE_TIMEOUT,
            )

    # -- heartbeats ------------------------------------------------------------------
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

    async def _status_loop(self, tunnel: Tunnel) -> None:
        """Keep the heartbeat's status current: audit backlog depth and oldest event."""
        while True:
            payload = self.heartbeat_payload()
            if self.outbox is not None:
                count, size, oldest = await self.outbox.depth()
                payload["audit"] = {"pending": count, "bytes": size, "oldest": oldest}
            tunnel.set_heartbeat_payload(payload)
            await asyncio.sleep(max(1.0, self.limits.heartbeat_interval / 2))

    # -- slots -------------------------------------------------------------------------
    async def run_forever(self) -> None:
        """Keep :meth:`HubSet.wanted` tunnels up and forward the audit outbox, until
        cancelled (then every tunnel is closed with a GOAWAY first)."""
        slots: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        #: slots being stopped: not started again until they are gone
        stopping: dict[int, asyncio.Task[None]] = {}
        forwarder = None
        if self.outbox is not None:
            forwarder = asyncio.ensure_future(self._forward())
        try:
            while True:
                self._wanted_changed.clear()
                wanted = self.hubset.wanted()
                for slot in range(wanted):
                    if slot in stopping:
                        continue  # its end wakes this loop again
                    if slot not in slots or slots[slot][0].done():
                        stop = asyncio.Event()
                        task = asyncio.ensure_future(self._slot_loop(slot, stop))
                        task.add_done_callback(lambda _t: self._wanted_changed.set())
                        slots[slot] = (task, stop)
                for slot in sorted(s for s in slots if s >= wanted):
                    task, stop = slots.pop(slot)
                    log.info("hub list asks for fewer tunnels", extra={"slot": slot})
                    closing = asyncio.ensure_future(
                        self._stop_slot(slot, task, stop, "the hub list asks for fewer tunnels")
                    )
                    stopping[slot] = closing
                    closing.add_done_callback(functools.partial(self._stopped, stopping, slot))
                await self._wanted_changed.wait()
        finally:
            if forwarder is not None:
                forwarder.cancel()
            # Each tunnel says goodbye (GOAWAY) and its slot writes tunnel.disconnect.
            ending = [
                self._stop_slot(s, t, stop, "agent stopping") for s, (t, stop) in slots.items()
            ]
            pending = list(stopping.values())
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*ending, *pending, return_exceptions=True)
            for task in [*(t for t, _ in slots.values()), *pending]:
                task.cancel()
            await asyncio.gather(
                *(t for t, _ in slots.values()),
                *pending,
                *([forwarder] if forwarder else []),
                return_exceptions=True,
            )

    def _stopped(
        self, stopping: dict[int, asyncio.Task[None]], slot: int, task: asyncio.Task[None]
    ) -> None:
        if stopping.get(slot) is task:
            del stopping[slot]
        self._wanted_changed.set()

    async def _stop_slot(
        self, slot: int, task: asyncio.Task[None], stop: asyncio.Event, reason: str
    ) -> None:
        """Stop ``slot``: close its tunnel with a GOAWAY and let it finish (its
        ``tunnel.disconnect`` written); a slot still dialling is cancelled."""
        stop.set()  # it dials no more
        run = self.runs.get(slot)
        if run is not None and run.tunnel is not None and not task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(run.tunnel.close(reason=reason), CLOSE_TIMEOUT)
            await asyncio.wait([task], timeout=CLOSE_TIMEOUT)
        task.cancel()  # a dial in flight (or a slot that did not finish in time)
        await asyncio.gather(task, return_exceptions=True)

    async def _slot_loop(self, slot: int, stop: asyncio.Event) -> None:
        """Keep ``slot``'s tunnel up, redialling with backoff, until ``stop`` is set."""
        attempt = 0
        try:
            if slot > 0 and self.extra_slot_jitter > 0:
                await _until(stop, self.rng.uniform(0, self.extra_slot_jitter))
            while not stop.is_set():
                try:
                    await self.run_once(slot)
                    if not stop.is_set():
                        log.warning("tunnel closed; reconnecting", extra=self._fields(slot))
                except RemotelerError as err:
                    log.warning("tunnel failed: %s", err, extra=self._fields(slot))
                except Exception:
                    log.exception("tunnel failed unexpectedly", extra=self._fields(slot))
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # SIGTERM cancelled us while a dial swallowed the CancelledError (seen
                    # once in CI: the agent redialled for 10 s until SIGKILL): stop anyway
                    raise asyncio.CancelledError
                if stop.is_set():
                    break
                delay, attempt = self.redial_wait(slot, attempt)
                log.info(
                    "reconnecting",
                    extra={
                        **self._fields(slot),
                        "in_s": round(delay, 2),
                        "attempt": attempt,
                        "retry_after": self.runs[slot].retry_after if slot in self.runs else None,
                    },
                )
                await _until(stop, delay)
        finally:
            self.hubset.remove(slot)
            self.runs.pop(slot, None)

    def _fields(self, slot: int) -> dict[str, Any]:
        run = self.runs.get(slot)
        fields: dict[str, Any] = {"slot": slot, "hub": run.addr if run else self.ident.hub}
        if run is not None and run.hub_id is not None:
            fields["hub_id"] = run.hub_id
        return fields

    def redial_wait(self, slot: int, attempt: int) -> tuple[float, int]:
        """Seconds ``slot`` waits before its next dial, and the attempt count after.

        :meth:`Backoff.next_wait` for the tunnel that just ended: its uptime counts
        from the handshake, and one heartbeat interval of it (when shorter than the
        backoff's ``stable_after``) resets the attempt count. A hub that sent us
        away with a retry-after (it is draining) is avoided that long; if another
        listed hub is free the slot goes there within :data:`MOVE_JITTER` instead
        of waiting, else the retry-after is obeyed.
        """
        run = self.runs.get(slot)
        now = time.monotonic()
        up = 0.0 if run is None or run.up_since is None else now - run.up_since
        retry_after = None if run is None else run.retry_after
        backoff, interval = self.backoff, self.limits.heartbeat_interval
        if 0 < interval < backoff.stable_after:
            backoff = dataclasses.replace(backoff, stable_after=interval)
        if retry_after and self.hubset.free(slot, now):
            if up >= backoff.stable_after:
                attempt = 0
            return self.rng.uniform(0, MOVE_JITTER), attempt
        return backoff.next_wait(attempt, up, retry_after, self.rng)

    def dial_timeout(self) -> float:
        """Seconds one dial may take: the dead-tunnel bound, within 5-15 s.

        A dial begun during an outage should not outlast the outage by much (the
        hub queues agents in a storm, so a longer wait there would not help).
        """
        bound = self.limits.heartbeat_interval * self.limits.allowed_misses
        return max(5.0, min(15.0, bound)) if bound > 0 else 15.0

    # -- one tunnel ----------------------------------------------------------------------
    async def run_once(self, slot: int = 0) -> None:
        """Dial where the hub set says for ``slot``, serve the tunnel until it ends."""
        ident = self.ident
        addr = self.hubset.pick(slot, time.monotonic(), self.rng)
        run = self.runs[slot] = TunnelRun(slot, addr)
        try:
            ws = await self._dial(addr)
        except BaseException:
            self.hubset.dial_failed(slot, time.monotonic())
            raise
        self.hubset.up(slot)
        core = Connection(Role.DIALER, self.limits, now=time.monotonic())
        core.ping_at_start = True  # the hub's time (and our status) at once
        tunnel = Tunnel(
            ws,
            core,
            on_channel=lambda request: self.on_channel(request, run),
            on_pong=lambda rtt, hub_time: self.on_pong(rtt, hub_time, run),
        )
        tunnel.set_heartbeat_payload(self.heartbeat_payload())
        run.tunnel, run.up_since = tunnel, time.monotonic()
        log.info("tunnel up", extra={**self._fields(slot), "node_id": ident.node_id})
        # tunnel.connect waits for the first heartbeat answer (one round trip: the
        # first PING leaves at once), which tells the hub's time on a wrong clock
        run.connect_pending = True
        self.tunnels_changed.set()
        status = asyncio.ensure_future(self._status_loop(tunnel))
        try:
            await tunnel.run()
        finally:
            status.cancel()
            await asyncio.gather(status, return_exceptions=True)
            run.retry_after = tunnel.retry_after
            self.hubset.down(slot, time.monotonic(), tunnel.retry_after)
            self.tunnels_changed.set()
            self._announce_connect(run)  # closed before any answer: still on record
            self.audit.emit_nowait(
                EventType.TUNNEL_DISCONNECT,
                hub=addr,
                **({"hub_id": run.hub_id} if run.hub_id is not None else {}),
                reason=str(tunnel.close_reason)[:200],
            )
            log.info(
                "tunnel down",
                extra={
                    **self._fields(slot),
                    "code": getattr(tunnel.close_code, "name", None),
                    "reason": tunnel.close_reason,
                },
            )

    async def _dial(self, addr: str) -> Any:
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
            return await open_ws(
                addr,
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
                hub=addr,
            )
            return ws

    def _learnt(self, run: TunnelRun | None, hubs: HubList) -> None:
        """A hub pushed its list on ``run``'s tunnel: that tunnel is on ``hubs.hub_id``."""
        before = self.hubset.wanted()
        if run is None:  # a tunnel not of ours (tests): only the list counts
            self.hubset.hubs = hubs
        else:
            if self.runs.get(run.slot) is run and run.tunnel is not None:
                self.hubset.learnt(run.slot, hubs)
            else:
                self.hubset.hubs = hubs
            if run.hub_id != hubs.hub_id:
                run.hub_id = hubs.hub_id
                log.info("tunnel is on hub", extra=self._fields(run.slot))
            if run.connect_at is not None:  # its first answer came: tunnel.connect now
                self._announce_connect(run)
        for slot, other in list(self.runs.items()):
            if self.hubset.duplicate(slot) and other.tunnel is not None:
                log.info("another tunnel is on this hub; moving", extra=self._fields(slot))
                closing = asyncio.ensure_future(
                    other.tunnel.close(reason="another tunnel of this node is on this hub")
                )
                self._background.add(closing)
                closing.add_done_callback(self._background.discard)
        if self.hubset.wanted() != before:
            log.info("hub list", extra={"hubs": len(hubs.hubs), "tunnels": self.hubset.wanted()})
            self._wanted_changed.set()

    async def _forward(self) -> None:
        """Forward the audit outbox over one tunnel at a time (the longest up)."""
        assert self.outbox is not None

        def pick() -> Tunnel | None:
            ups = [
                (self.hubset.duplicate(slot), run.up_since or 0.0, slot, run.tunnel)
                for slot, run in self.runs.items()
                if run.tunnel is not None and not run.tunnel.closed.is_set()
            ]
            return min(ups, key=lambda u: u[:3])[3] if ups else None

        def on(tunnel: Tunnel | None) -> None:
            self.forwarding = tunnel

        await forward_on_any(self.outbox, pick, self.tunnels_changed, on)

    # -- channels from the hub -------------------------------------------------------------
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


async def _until(stop: asyncio.Event, delay: float) -> None:
    """Sleep ``delay`` seconds, or less if ``stop`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)
