"""Keep the agent's tunnels up: one per *slot*, redialled with backoff, for ever.

Slot 0 always runs; more start when a hub's list asks for more
(``connection_count``) and stop when it asks for fewer. Where each slot dials is
:class:`edge_agent.hubset.HubSet`'s decision (docs/edge-agent.md, "Several hubs").
What a tunnel serves (channels, heartbeats, its audit events) is the agent's: it
is the :class:`SlotHost` these slots are given.

A hub that refuses a tunnel because another tunnel of this node there carries
sessions (HTTP 409, "dial another hub": hub/api/server.py) holds that node: the
slot tries again later with a bounded backoff of its own, which neither counts
as a failure nor resets the failure backoff. So does a slot that finds no hub it
may dial (:meth:`HubSet.pick` returned None); it also wakes when a list arrives
or a tunnel ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge_agent.hubset import HELD_AVOID, HubSet
from edge_agent.waiting import first
from remoteler.errors import RemotelerError, TunnelHeld
from remoteler.hublist import HubList
from remoteler.wire.aio import ChannelRequest, Tunnel
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits

__all__ = [
    "CLOSE_TIMEOUT",
    "MOVE_JITTER",
    "Backoff",
    "HubHeld",
    "SlotHost",
    "TunnelRun",
    "TunnelSlots",
    "is_held_refusal",
]

log = logging.getLogger("remoteler.agent")

#: Seconds a slot waits at most before moving off a hub that sent it away (a
#: draining hub's GOAWAY with a retry-after) when another listed hub is free.
MOVE_JITTER = 1.0
#: Seconds a tunnel of a stopping slot, or of a stopping agent, has to say goodbye.
CLOSE_TIMEOUT = 5.0
#: Most seconds a slot waits between two tries at a held hub (or for a free one).
HELD_WAIT_MAX = 30.0


class HubHeld(RemotelerError):
    """No tunnel this time, and not a failure: the hub reached holds another tunnel
    of this node that carries sessions, or no hub may be dialled now."""

    code = "node"

    def __init__(self, message: str, *, nothing_free: bool = False) -> None:
        super().__init__(message)
        #: no dial was made: no listed hub is free (wake on a list or a tunnel's end)
        self.nothing_free = nothing_free


def is_held_refusal(err: BaseException) -> bool:
    """True if ``err`` is a hub's 409 for a second tunnel of this node to it."""
    return isinstance(err, TunnelHeld)


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

    def held_wait(self, held: int, rng: random.Random) -> float:
        """Seconds to wait after the ``held``-th try in a row found the hub held (or
        nothing to dial): doubling from ``base``, at most ``cap`` and
        :data:`HELD_WAIT_MAX`, jittered over its upper half (never 0: a refusal
        costs the hub a TLS handshake)."""
        top = min(self.cap, HELD_WAIT_MAX, self.base * (2 ** min(held, 30)))
        return rng.uniform(top / 2, top)


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
    #: ssh channels (users' sessions) open on it now: such a tunnel is never dropped
    #: as a duplicate
    sessions: int = 0
    #: closed by us as a duplicate (the close is in flight)
    closing: bool = False
    #: tunnel.connect: not yet written; the time (hub-corrected) it is stamped with
    connect_pending: bool = False
    connect_at: float | None = None
    connect_timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class SlotHost(Protocol):
    """What the slots need from the agent that owns them."""

    async def dial(self, addr: str, timeout: float) -> Any:
        """Open the tunnel's websocket to ``addr``; raise RemotelerError on failure."""

    async def on_channel(self, request: ChannelRequest, run: TunnelRun) -> None:
        """Serve a channel the hub opened on ``run``'s tunnel."""

    def on_pong(self, rtt: float, hub_time: float | None, run: TunnelRun) -> None:
        """A heartbeat answer on ``run``'s tunnel."""

    def heartbeat_payload(self) -> dict[str, object]:
        """The status a new tunnel's first heartbeat carries."""

    def tunnel_up(self, run: TunnelRun) -> None:
        """``run``'s tunnel is up (before it runs)."""

    async def keep_status(self, tunnel: Tunnel) -> None:
        """Keep ``tunnel``'s heartbeat status current; cancelled when it ends."""

    def tunnel_down(self, run: TunnelRun) -> None:
        """``run``'s tunnel ended (its close code and reason are set)."""


class TunnelSlots:
    """The agent's slots: :meth:`run` keeps :meth:`HubSet.wanted` tunnels up."""

    def __init__(
        self,
        host: SlotHost,
        bootstrap: str,
        limits: Limits,
        backoff: Backoff,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.limits = limits
        self.backoff = backoff
        self.rng = rng or random.Random()
        #: where each slot dials: the bootstrap address is the identity's hub (--hub)
        self.hubset = HubSet(bootstrap)
        #: each slot's current or last tunnel
        self.runs: dict[int, TunnelRun] = {}
        #: seconds an extra slot (one a hub list asked for) waits, at most, before its
        #: first dial: a list reaching a whole fleet does not make it dial at once
        self.extra_slot_jitter = 5.0
        #: seconds a hub that refused a tunnel as held (409) is passed over
        self.held_avoid = HELD_AVOID
        #: set whenever a tunnel comes up or goes down
        self.tunnels_changed = asyncio.Event()
        #: pulsed (set, cleared) when a list arrives or a tunnel ends: a slot that
        #: found no hub to dial looks again
        self._hubs_changed = asyncio.Event()
        self._wanted_changed = asyncio.Event()
        #: closes of duplicate tunnels in flight
        self._background: set[asyncio.Future[None]] = set()

    # -- the tunnels up now ---------------------------------------------------------
    @property
    def tunnels(self) -> dict[int, Tunnel]:
        """Slot -> tunnel, for every tunnel up now."""
        return {
            slot: run.tunnel
            for slot, run in sorted(self.runs.items())
            if run.tunnel is not None and not run.tunnel.closed.is_set()
        }

    def forwarding_order(self) -> list[Tunnel]:
        """The tunnels up now, best first for the audit outbox: not a duplicate, then
        the longest up, then the lowest slot."""
        ups = [
            (self.hubset.duplicate(slot), run.up_since or 0.0, slot, run.tunnel)
            for slot, run in self.runs.items()
            if run.tunnel is not None and not run.tunnel.closed.is_set()
        ]
        return [up[3] for up in sorted(ups, key=lambda u: u[:3])]

    async def close_all(self, reason: str) -> None:
        """Close every tunnel with a GOAWAY (an agent stopping); waits a few seconds."""
        tunnels = list(self.tunnels.values())
        if tunnels:
            await asyncio.wait(
                [asyncio.ensure_future(t.close(reason=reason)) for t in tunnels],
                timeout=CLOSE_TIMEOUT,
            )

    # -- what the hubs say ------------------------------------------------------------
    def learnt(self, run: TunnelRun | None, hubs: HubList) -> None:
        """A hub pushed its list on ``run``'s tunnel: that tunnel is on ``hubs.hub_id``."""
        before = self.hubset.wanted()
        if run is not None and self.runs.get(run.slot) is run and run.tunnel is not None:
            self.hubset.learnt(run.slot, hubs)
        else:  # a tunnel not of ours (tests), or one that ended: only the list counts
            self.hubset.hubs = hubs
        if run is not None and run.hub_id != hubs.hub_id:
            run.hub_id = hubs.hub_id
            log.info("tunnel is on hub", extra=self.fields(run.slot))
        self.close_duplicates()
        _pulse(self._hubs_changed)
        if self.hubset.wanted() != before:
            log.info("hub list", extra={"hubs": len(hubs.hubs), "tunnels": self.hubset.wanted()})
            self._wanted_changed.set()

    def close_duplicates(self) -> None:
        """Close each tunnel that is on a hub an earlier one holds (it redials
        elsewhere), unless it carries a session: a user's session is never dropped
        for this; such a tunnel is looked at again when its last session ends."""
        for slot, run in list(self.runs.items()):
            tunnel = run.tunnel
            if tunnel is None or tunnel.closed.is_set() or run.closing:
                continue
            if not self.hubset.duplicate(slot):
                continue
            if run.sessions:
                log.debug(
                    "another tunnel is on this hub; kept for its sessions", extra=self.fields(slot)
                )
                continue
            log.info("another tunnel is on this hub; moving", extra=self.fields(slot))
            run.closing = True
            closing = asyncio.ensure_future(
                tunnel.close(reason="another tunnel of this node is on this hub")
            )
            self._background.add(closing)
            closing.add_done_callback(self._background.discard)

    # -- slots -------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep :meth:`HubSet.wanted` tunnels up until cancelled (then every tunnel
        is closed with a GOAWAY first)."""
        slots: dict[int, tuple[asyncio.Task[None], asyncio.Event]] = {}
        #: slots being stopped: not started again until they are gone
        stopping: dict[int, asyncio.Task[None]] = {}
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
            # Each tunnel says goodbye (GOAWAY) and its slot writes tunnel.disconnect.
            ending = [
                self._stop_slot(s, t, stop, "agent stopping") for s, (t, stop) in slots.items()
            ]
            pending = list(stopping.values())
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*ending, *pending, return_exceptions=True)
            for task in [*(t for t, _ in slots.values()), *pending]:
                task.cancel()
            await asyncio.gather(*(t for t, _ in slots.values()), *pending, return_exceptions=True)

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
        attempt = held = 0
        try:
            if slot > 0 and self.extra_slot_jitter > 0:
                await first(asyncio.sleep(self.rng.uniform(0, self.extra_slot_jitter)), stop.wait())
            while not stop.is_set():
                refused: HubHeld | None = None
                try:
                    await self.run_once(slot)
                    if not stop.is_set():
                        log.warning("tunnel closed; reconnecting", extra=self.fields(slot))
                except HubHeld as err:
                    refused = err
                    log.info("%s; trying again later", err, extra=self.fields(slot))
                except RemotelerError as err:
                    log.warning("tunnel failed: %s", err, extra=self.fields(slot))
                except Exception:
                    log.exception("tunnel failed unexpectedly", extra=self.fields(slot))
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # SIGTERM cancelled us while a dial swallowed the CancelledError (seen
                    # once in CI: the agent redialled for 10 s until SIGKILL): stop anyway
                    raise asyncio.CancelledError
                if stop.is_set():
                    break
                wake = [stop.wait()]
                if refused is not None:
                    delay, held = self.backoff.held_wait(held, self.rng), held + 1
                    if refused.nothing_free:
                        wake.append(self._hubs_changed.wait())
                else:
                    delay, attempt = self.redial_wait(slot, attempt)
                    held = 0
                log.info(
                    "reconnecting",
                    extra={
                        **self.fields(slot),
                        "in_s": round(delay, 2),
                        "attempt": attempt,
                        "held": held,
                        "retry_after": self.runs[slot].retry_after if slot in self.runs else None,
                    },
                )
                await first(asyncio.sleep(delay), *wake)
        finally:
            self.hubset.remove(slot)
            self.runs.pop(slot, None)
            _pulse(self._hubs_changed)

    def fields(self, slot: int) -> dict[str, Any]:
        """Log fields naming ``slot``, the address it dialled and its hub."""
        run = self.runs.get(slot)
        fields: dict[str, Any] = {"slot": slot, "hub": run.addr if run else self.hubset.bootstrap}
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
        """Dial where the hub set says for ``slot``, serve the tunnel until it ends.

        Raises :class:`HubHeld` when there is nowhere to dial, or the hub reached
        refused the tunnel for another of this node's there; RemotelerError when
        the dial failed.
        """
        host = self.host
        addr = self.hubset.pick(slot, time.monotonic(), self.rng)
        if addr is None:
            raise HubHeld(
                "no listed hub is free and another tunnel is up; not dialling --hub",
                nothing_free=True,
            )
        run = self.runs[slot] = TunnelRun(slot, addr)
        try:
            ws = await host.dial(addr, self.dial_timeout())
        except BaseException as err:
            if is_held_refusal(err):
                self.hubset.dial_held(slot, time.monotonic(), self.held_avoid)
                raise HubHeld(str(err)) from None
            self.hubset.dial_failed(slot, time.monotonic())
            _pulse(self._hubs_changed)
            raise
        self.hubset.up(slot)
        core = Connection(Role.DIALER, self.limits, now=time.monotonic())
        core.ping_at_start = True  # the hub's time (and our status) at once
        tunnel = Tunnel(
            ws,
            core,
            on_channel=lambda request: host.on_channel(request, run),
            on_pong=lambda rtt, hub_time: host.on_pong(rtt, hub_time, run),
        )
        tunnel.set_heartbeat_payload(host.heartbeat_payload())
        run.tunnel, run.up_since = tunnel, time.monotonic()
        host.tunnel_up(run)
        self.tunnels_changed.set()
        status = asyncio.ensure_future(host.keep_status(tunnel))
        try:
            await tunnel.run()
        finally:
            status.cancel()
            await asyncio.gather(status, return_exceptions=True)
            run.retry_after = tunnel.retry_after
            self.hubset.down(slot, time.monotonic(), tunnel.retry_after)
            self.tunnels_changed.set()
            _pulse(self._hubs_changed)
            host.tunnel_down(run)


def _pulse(event: asyncio.Event) -> None:
    """Wake every task waiting on ``event`` now, and leave it clear for the next."""
    event.set()
    event.clear()
