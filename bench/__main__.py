"""``python -m bench [NAME ...] [--smoke]``: run benchmarks, print a table, write results.json."""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import traceback
from pathlib import Path

from bench.harness import (
    BENCHMARKS,
    Context,
    Figure,
    MissingTool,
    figures_table,
    write_results,
)

MODULES = [
    "bench.relay",
    "bench.setup_time",
    "bench.latency",
    "bench.footprint",
    "bench.agent_size",
    "bench.scale",
    "bench.audit",
    "bench.seqmark",
    "bench.chaos",
    "bench.recording_proxy",
    "bench.attack_memory",
    "bench.sftp_server",
    "bench.slowlink",
    "bench.cluster",
    "bench.resume",
    "bench.web",
]


def main(argv: list[str] | None = None) -> int:
    for module in MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes: proves they run, no figures"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=None, help="results file (default bench/results.json)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        print(
            f"bench: unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}",
            file=sys.stderr,
        )
        return 2
    names = args.names or list(BENCHMARKS)
    figures: list[Figure] = []
    failed = []
    with tempfile.TemporaryDirectory(prefix="remoteler-bench-") as tmp:
        for name in names:
            ctx = Context(
                smoke=args.smoke,
                workdir=Path(tmp) / name,
                repeats=1 if args.smoke else args.repeats,
            )
            ctx.workdir.mkdir(parents=True)
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                figures += BENCHMARKS[name](ctx)
            except MissingTool as exc:
                print(f"bench: {name}: {exc}", file=sys.stderr)
                failed.append(name)
            except Exception:
                traceback.print_exc()
                failed.append(name)
    print(figures_table(figures))
    output = args.output or (None if args.smoke else str(Path(__file__).parent / "results.json"))
    if output:
        write_results(Path(output), figures, args.smoke)
        print(f"\nwritten to {output}", file=sys.stderr)
    if failed:
        print(f"bench: {', '.join(failed)} failed (see above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
