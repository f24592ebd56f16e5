"""``/metrics``: the hub's state in Prometheus text format (prometheus-client).

Read at scrape time from the running hub (no counters kept twice): tunnels, the
listener's handshake lanes, open sessions, devices' reported audit backlog, web
sessions, relay bytes and stored audit events (hub/api/counters.py), and the event
loop's lag and the garbage collector's pauses, which this module measures.
Roll-out states are read from storage at most every :data:`ROLLOUT_EVERY`
seconds; web requests are counted here. docs/web.md says how to scrape it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hub.api.server import HubServer
    from hub.web.sessions import WebSessions

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ROLLOUT_EVERY = 10.0
LAG_TICK = 0.25


class LoopWatch:
    """The event loop's lag (how late a timer fires) and GC pause times."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.lag = Histogram(
            "remoteler_loop_lag_seconds",
            "How late the hub's event loop ran a timer",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.gc_pause = Histogram(
            "remoteler_gc_pause_seconds",
            "Garbage collector pauses",
            ["generation"],
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5),
            registry=registry,
        )
        self._gc_start = 0.0
        self._task: asyncio.Task[None] | None = None

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_start = time.perf_counter()
        elif self._gc_start:
            pause = time.perf_counter() - self._gc_start
            self.gc_pause.labels(str(info.get("generation", "?"))).observe(pause)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(LAG_TICK)
            self.lag.observe(max(0.0, loop.time() - start - LAG_TICK))

    def start(self) -> None:
        gc.callbacks.append(self._gc)
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self._task is not None:
            self._task.cancel()


class HubCollector(Collector):
    def __init__(self, server: HubServer, sessions: WebSessions) -> None:
        self.server = server
        self.sessions = sessions
        self.rollout_states: dict[str, int] = {}

    async def refresh_rollouts(self) -> None:
        states: dict[str, int] = {}
        for rollout in await self.server.storage.firmware.rollouts():
            states[rollout.state] = states.get(rollout.state, 0) + 1
        self.rollout_states = states

    def collect(self) -> Iterator[Metric]:
        server = self.server
        live = server.registry.live()
        yield GaugeMetricFamily(
            "remoteler_tunnels", "Agent tunnels held by this hub", value=len(live)
        )
        sessions = GaugeMetricFamily("remoteler_sessions", "Open sessions by kind", labels=["kind"])
        sessions.add_metric(["relay"], sum(n.sessions for n in live))
        sessions.add_metric(["web"], len(self.sessions))
        yield sessions
        pending = sum(n.status.audit.pending for n in live if n.status.audit is not None)
        yield GaugeMetricFamily(
            "remoteler_device_audit_backlog_events",
            "Audit events waiting in the outboxes of connected devices (their heartbeats)",
            value=pending,
        )
        listener = server.listener
        if listener is not None:
            stats = listener.stats()
            waiting = GaugeMetricFamily(
                "remoteler_handshakes_waiting",
                "Connections queued for a TLS handshake",
                labels=["lane"],
            )
            admitted = GaugeMetricFamily(
                "remoteler_handshakes_admitted_total", "TLS handshakes admitted", labels=["lane"]
            )
            for lane in listener.lanes:
                waiting.add_metric([lane], stats.get(f"{lane}_waiting", 0))
                admitted.add_metric([lane], stats.get(f"{lane}_admitted", 0))
            yield waiting
            yield admitted
            yield GaugeMetricFamily(
                "remoteler_handshakes_in_flight",
                "Accepted connections not yet through TLS",
                value=stats.get("queued", 0),
            )
        counts = server.counters
        relay = CounterMetricFamily(
            "remoteler_relay_bytes", "Bytes relayed between users and nodes", labels=["direction"]
        )
        relay.add_metric(["to_node"], counts.relay_to_node)
        relay.add_metric(["to_user"], counts.relay_to_user)
        yield relay
        yield CounterMetricFamily(
            "remoteler_audit_events_ingested",
            "Audit events devices delivered and this hub stored",
            value=counts.audit_ingested,
        )
        rollouts = GaugeMetricFamily(
            "remoteler_rollouts", "Firmware roll-outs by state", labels=["state"]
        )
        for state, count in sorted(self.rollout_states.items()):
            rollouts.add_metric([state], count)
        yield rollouts


class HubMetrics:
    """The registry ``/metrics`` renders, and the counters the web console feeds."""

    def __init__(self, server: HubServer, sessions: WebSessions) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = HubCollector(server, sessions)
        self.registry.register(self.collector)
        self.loop = LoopWatch(self.registry)
        self.web_requests = Counter(
            "remoteler_web_requests", "Web console requests", ["status"], registry=self.registry
        )
        self._rollouts_at = 0.0

    async def render(self) -> bytes:
        now = time.monotonic()
        if now - self._rollouts_at >= ROLLOUT_EVERY:
            self._rollouts_at = now
            # storage down: the last figures stay, /readyz says why
            with contextlib.suppress(Exception):
                await self.collector.refresh_rollouts()
        return generate_latest(self.registry)
