"""The benchmark harness: a registry, figures, statistics and the results table.

A benchmark is a function ``(ctx) -> list[Figure]`` registered with
:func:`benchmark`. Later issues add their own modules and register more.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from remoteler.textfmt import table


class MissingTool(Exception):
    """A tool a benchmark needs is not installed; the message names the package.

    ``python -m bench`` prints it as one line and fails that benchmark: a reference
    row (OpenSSH) must never be silently missing from the table (``make bench``
    installs nothing by itself; ``.ci/run`` does).
    """


@dataclass
class Figure:
    bench: str
    name: str
    unit: str
    median: float
    p99: float | None = None
    samples: list[float] = field(default_factory=list)
    #: what the figure is compared with, e.g. "asyncssh direct (aes128-gcm)"
    reference: str | None = None
    #: median / reference median (or the inverse for lower-is-better units)
    ratio: float | None = None
    goal: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Context:
    smoke: bool
    workdir: Path
    repeats: int = 5

    def pick(self, full: Any, smoke: Any) -> Any:
        return smoke if self.smoke else full


Bench = Callable[[Context], list[Figure]]
BENCHMARKS: dict[str, Bench] = {}


def benchmark(name: str) -> Callable[[Bench], Bench]:
    def register(fn: Bench) -> Bench:
        BENCHMARKS[name] = fn
        return fn

    return register


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def p99(values: Sequence[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))])


def rate_mib_s(size: int, wall: float, setup: float) -> float:
    """MiB/s of a transfer whose process took ``wall`` s, ``setup`` of it start-up.

    Meaningful only when the transfer dominates the wall time: the full runs'
    sizes (1 GiB, 256 MiB) do; the smoke runs' 1 MiB gives a number, not a rate.
    """
    return size / (1 << 20) / max(wall - setup, 1e-6)


def ratio(value: float, reference: float) -> float | None:
    """``value / reference``, or None when either is missing (NaN) or the reference is 0."""
    if value != value or reference != reference or not reference:
        return None
    return value / reference


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _fmt(value: float | None) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def figures_table(figures: Sequence[Figure]) -> str:
    headers = ["bench", "figure", "median", "p99", "unit", "vs", "ratio", "goal", "met"]
    rows = [
        [
            f.bench,
            f.name,
            _fmt(f.median),
            _fmt(f.p99),
            f.unit,
            f.reference or "",
            f"{f.ratio:.2f}x" if f.ratio is not None else "",
            f.goal,
            {True: "yes", False: "NO", None: ""}[f.met],
        ]
        for f in figures
    ]
    return table(rows, headers)


def write_results(path: Path, figures: Sequence[Figure], smoke: bool) -> None:
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": __import__("os").cpu_count(),
        },
        "smoke": smoke,
        "figures": [asdict(f) for f in figures],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
