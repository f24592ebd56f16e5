"""Audit trail: outbox write rate, drain time of a backlog, receiver ingest rate.

The outbox is the real one (SQLite, WAL, synchronous=FULL) in the work dir. The
backlog drains through the real forwarder and a real Tunnel pair over websockets
on 127.0.0.1 (no TLS) to a tiny in-process receiver that validates each batch
(``parse_batch``), keeps the events in a dict and acks: the hub's store is not in
this figure. Events are ``exec`` records of about 150 bytes. The receiver
applies the hub's default per-node quota (hub/audit/quota.py) as the hub does: a
drain it would throttle shows as refused events and a longer drain.

A second drain stores each batch through the hub's storage interface before it
acks (``storage.audit.insert_checked``, as hub/audit/ingest.py does), on the
engine ``BENCH_STORAGE`` names: ``sqlite`` (default; audit.db in the work dir)
or ``postgresql`` (a throw-away server started by tests/pgkit.py, Debian's
postgresql). The figure is labelled with the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from bench.fixtures import storage_engine
from bench.harness import Context, Figure, benchmark, median
from edge_agent.forwarder import run_forwarder
from edge_agent.outbox import Outbox
from hub.audit.quota import AuditQuotas
from hub.storage import Storage, open_storage
from remoteler.audit.events import AuditEvent, EventType, make_event
from remoteler.audit.stream import (
    MessageReader,
    ack_message,
    encode_message,
    parse_batch,
    refused_message,
)
from remoteler.wire.aio import ChannelRequest, Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.connection import Connection, Role

NODE = "bench-node"
WRITERS = 64


def _event(i: int) -> AuditEvent:
    return make_event(
        EventType.EXEC,
        node=NODE,
        user="alice",
        login="root",
        command=f"systemctl status unit-{i}",
        exit_code=0,
    )


async def _fill(box: Outbox, n: int, writers: int) -> float:
    """Append ``n`` events from ``writers`` concurrent tasks; return events/s."""

    async def writer(k: int) -> None:
        for i in range(k, n, writers):
            await box.append(_event(i))

    start = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(writers)))
    return n / (time.perf_counter() - start)


async def _write_rate(path: Path, n: int, writers: int) -> float:
    box = await Outbox.open(path, node=NODE)
    try:
        return await _fill(box, n, writers)
    finally:
        await box.close()
        for p in path.parent.glob(path.name + "*"):
            p.unlink()


class _Receiver:
    def __init__(self, expected: int, storage: Storage | None = None) -> None:
        #: where batches go before the ack (None: a dict, no database)
        self.storage = storage
        self.stored: dict[str, AuditEvent] = {}
        self.expected = expected
        self.busy = 0.0  # seconds spent decoding and storing
        self.quotas = AuditQuotas()  # the hub's defaults
        self.refused = 0
        self.done = asyncio.Event()

    async def on_channel(self, request: ChannelRequest) -> None:
        if request.kind != "audit":
            request.reject(OpenFailure.UNKNOWN_KIND, "no such channel")
            return
        channel = request.accept()
        reader = MessageReader()
        while data := await channel.read():
            start = time.perf_counter()
            for message in reader.feed(data):
                events = parse_batch(message)
                grant = self.quotas.take(NODE, len(events), time.monotonic())
                self.refused += len(events) - grant.accepted
                if self.storage is not None and grant.accepted:
                    await self.storage.audit.insert_checked(NODE, events[: grant.accepted])
                for e in events[: grant.accepted]:
                    self.stored.setdefault(e.id, e)
                if grant.retry_after is None:
                    reply = ack_message([e.id for e in events])
                elif grant.accepted:
                    reply = ack_message([e.id for e in events[: grant.accepted]], grant.retry_after)
                else:
                    reply = refused_message(grant.retry_after, "quota")
                channel.write(encode_message(reply))
            self.busy += time.perf_counter() - start
            if len(self.stored) >= self.expected:
                self.done.set()

    async def handler(self, ws: ServerConnection) -> None:
        await Tunnel(ws, Connection(Role.LISTENER), on_channel=self.on_channel).run()


async def _drain(
    path: Path, n: int, storage: Storage | None = None
) -> tuple[float, float, float, int]:
    """Buffer ``n`` events, drain them (into ``storage``'s audit log if given); return
    (fill events/s, drain seconds, ingest events/s, events refused by the quota)."""
    box = await Outbox.open(path, node=NODE)
    try:
        fill_rate = await _fill(box, n, 1024)
        receiver = _Receiver(n, storage)
        async with serve(receiver.handler, "127.0.0.1", 0, compression=None) as server:
            port = server.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
                tunnel = Tunnel(ws, Connection(Role.DIALER))
                pump = asyncio.create_task(tunnel.run())
                start = time.perf_counter()
                forwarder = asyncio.create_task(run_forwarder(box, tunnel))
                await receiver.done.wait()
                while (await box.depth())[0]:  # the last ack reached the outbox
                    await asyncio.sleep(0.005)
                elapsed = time.perf_counter() - start
                await tunnel.close()
                await asyncio.gather(forwarder, pump)
        assert len(receiver.stored) == n
        return fill_rate, elapsed, n / receiver.busy, receiver.refused
    finally:
        await box.close()
        for p in path.parent.glob(path.name + "*"):
            p.unlink()


@contextlib.asynccontextmanager
async def _storage(spec: str | None, data_dir: Path) -> AsyncIterator[Storage]:
    data_dir.mkdir(parents=True, exist_ok=True)
    storage = await open_storage(spec, data_dir)
    try:
        yield storage
    finally:
        await storage.close()


async def _drain_into(path: Path, n: int, spec: str | None, data_dir: Path) -> float:
    """Seconds to drain ``n`` buffered events into a fresh audit log of the engine."""
    async with _storage(spec, data_dir) as storage:
        _fill_rate, elapsed, _ingest, _refused = await _drain(path, n, storage)
        assert await storage.audit.count(NODE) >= n
        return elapsed


@benchmark("audit")
def audit(ctx: Context) -> list[Figure]:
    n_write = ctx.pick(20_000, 500)
    n_single = ctx.pick(2_000, 100)
    n_drain = ctx.pick(100_000, 500)
    path = ctx.workdir / "outbox.db"
    concurrent = [asyncio.run(_write_rate(path, n_write, WRITERS)) for _ in range(ctx.repeats)]
    single = [asyncio.run(_write_rate(path, n_single, 1)) for _ in range(ctx.repeats)]
    runs = [asyncio.run(_drain(path, n_drain)) for _ in range(min(ctx.repeats, 3))]
    drains = [r[1] for r in runs]
    with storage_engine() as (engine, fresh):
        stored = [  # each run into an empty store: a new data dir or database
            asyncio.run(_drain_into(path, n_drain, fresh(), ctx.workdir / f"hubdata-{i}"))
            for i in range(min(ctx.repeats, 3))
        ]
    return [
        Figure(
            "audit",
            f"outbox write, {WRITERS} concurrent writers",
            "events/s",
            median(concurrent),
            samples=concurrent,
            note="group commit, synchronous=FULL",
        ),
        Figure(
            "audit",
            "outbox write, 1 writer (fsync each)",
            "events/s",
            median(single),
            samples=single,
        ),
        Figure(
            "audit",
            f"drain {n_drain:,} buffered events",
            "s",
            median(drains),
            samples=drains,
            goal="< 20 s for 100,000",
            met=None if ctx.smoke else median(drains) < 20,
            note=f"buffered at {median([r[0] for r in runs]):,.0f} events/s (1024 writers)",
        ),
        Figure(
            "audit",
            f"drain {n_drain:,} buffered events into the hub's store ({engine})",
            "s",
            median(stored),
            samples=stored,
            goal="< 20 s for 100,000",
            met=None if ctx.smoke else median(stored) < 20,
            note=f"storage.audit.insert_checked before each ack; BENCH_STORAGE={engine}",
        ),
        Figure(
            "audit",
            "drain: events refused by the default per-node hub quota",
            "events",
            max(r[3] for r in runs),
            goal="0 (burst 200,000)",
            met=max(r[3] for r in runs) == 0,
        ),
        Figure(
            "audit",
            "drain rate",
            "events/s",
            n_drain / median(drains),
            samples=[n_drain / d for d in drains],
        ),
        Figure(
            "audit",
            "receiver ingest (decode+validate, no DB)",
            "events/s",
            median([r[2] for r in runs]),
            samples=[r[2] for r in runs],
        ),
    ]
