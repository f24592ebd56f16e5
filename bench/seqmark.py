"""The audit sequence's high-water mark (edge_agent/seqmark.py): what it costs an append.

The real outbox (SQLite, WAL, synchronous=FULL) in the work dir, one writer (an
fsync per event, the worst case for the mark's share) and 64 concurrent ones
(group commit), without a mark, with the default reservation
(:data:`~edge_agent.seqmark.RESERVE_AHEAD` seqs per durable write) and with a
mark written before every commit (``ahead`` 1), which is what reserving no
numbers ahead would cost. Plus one durable write of the mark alone.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

from bench.harness import Context, Figure, benchmark, median
from edge_agent.outbox import Outbox
from edge_agent.seqmark import RESERVE_AHEAD, SeqMark
from remoteler.audit.events import EventType, make_event

NODE = "bench-node"


async def _rate(workdir: Path, n: int, writers: int, ahead: int | None) -> float:
    """Append ``n`` events from ``writers`` tasks; return events/s."""
    work = workdir / "seqmark"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    mark = None if ahead is None else SeqMark.load(work, NODE, ahead=ahead)
    box = await Outbox.open(work / "audit.db", node=NODE, mark=mark)

    async def writer(k: int) -> None:
        for i in range(k, n, writers):
            await box.append(
                make_event(EventType.EXEC, node=NODE, command=f"unit-{i}", exit_code=0)
            )

    try:
        start = time.perf_counter()
        await asyncio.gather(*(writer(k) for k in range(writers)))
        return n / (time.perf_counter() - start)
    finally:
        await box.close()
        shutil.rmtree(work, ignore_errors=True)


def _reserve_ms(workdir: Path, n: int) -> list[float]:
    mark = SeqMark.load(workdir, NODE, ahead=1)
    out = []
    for i in range(n):
        start = time.perf_counter()
        mark.reserve(i)
        out.append((time.perf_counter() - start) * 1000)
    (workdir / "audit-seq.json").unlink()
    return out


@benchmark("audit_seqmark")
def seqmark(ctx: Context) -> list[Figure]:
    single, concurrent = ctx.pick(1_000, 50), ctx.pick(20_000, 500)
    figures = [
        Figure(
            "audit_seqmark",
            "one durable write of the mark",
            "ms",
            median(samples := _reserve_ms(ctx.workdir, ctx.pick(200, 5))),
            samples=samples,
            note="fsync, atomic rename, directory fsync",
        )
    ]
    for writers, n in ((1, single), (64, concurrent)):
        for label, ahead in (
            ("no mark", None),
            (f"mark, {RESERVE_AHEAD} ahead", RESERVE_AHEAD),
            ("mark every commit", 1),
        ):
            rates = [asyncio.run(_rate(ctx.workdir, n, writers, ahead)) for _ in range(ctx.repeats)]
            figures.append(
                Figure(
                    "audit_seqmark",
                    f"outbox write, {writers} writer{'s' if writers > 1 else ''}, {label}",
                    "events/s",
                    median(rates),
                    samples=rates,
                )
            )
    return figures
