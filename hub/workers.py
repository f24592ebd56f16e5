"""``hub start --workers N``: N hub processes on one host sharing the listening port.

Each worker is a full member of the cluster (its own hub id ``ID-wI``, its own peer
port, the shared storage); the kernel spreads new connections over them with
SO_REUSEPORT, and a session that lands on a worker not holding the node's tunnel
takes a peer hop over loopback (docs/cluster.md, "Several cores"). This process only
supervises: it starts the workers, passes SIGTERM/SIGINT on (each drains as a single
hub does), and starts a worker again a second after it dies unexpectedly.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from hub.hubid import load_hub_id
from remoteler.addr import format_hostport, parse_hostport
from remoteler.errors import UsageError

log = logging.getLogger("remoteler.hub.workers")

#: Most workers (a hub process uses one core; more than the machine has only costs).
MAX_WORKERS = 64
#: Seconds before a worker that died is started again.
RESTART_DELAY = 1.0


def worker_settings(args: argparse.Namespace, index: int, base_id: str) -> list[str]:
    """The options that make worker ``index`` of ``args`` differ from the others."""
    extra = ["--worker-index", str(index), "--hub-id", f"{base_id}-w{index}"]
    if args.peer_listen:
        host, port = parse_hostport(args.peer_listen)
        extra += ["--peer-listen", format_hostport(host, port + index if port else 0)]
    return extra


def check(args: argparse.Namespace) -> None:
    if not 1 <= args.workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be 1 to {MAX_WORKERS}")
    if parse_hostport(args.listen)[1] == 0:
        raise UsageError("--workers needs a fixed --listen port (the workers share it)")
    if args.peer_listen is None:
        raise UsageError(
            "--workers needs --peer-listen HOST:PORT (worker I listens on PORT+I): "
            "a session may land on a worker that does not hold the node's tunnel"
        )


def supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``args.workers`` workers until SIGTERM/SIGINT; the exit status."""
    check(args)
    base_id = load_hub_id(Path(args.data_dir), args.hub_id)
    stopping = False
    procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(index: int) -> None:
        cmd = [sys.executable, "-m", "hub.cli", *argv, *worker_settings(args, index, base_id)]
        procs[index] = subprocess.Popen(cmd)
        log.info("worker started", extra={"worker": index, "pid": procs[index].pid})

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for index in range(args.workers):
        start(index)
    died_at: dict[int, float] = {}
    while True:
        alive = False
        for index, proc in list(procs.items()):
            code = proc.poll()
            if code is None:
                alive = True
                continue
            if stopping:
                continue
            now = time.monotonic()
            if index not in died_at:
                log.warning(
                    "worker exited; starting it again", extra={"worker": index, "code": code}
                )
                died_at[index] = now
            if now - died_at[index] >= RESTART_DELAY:
                died_at.pop(index)
                start(index)
                alive = True
        if stopping and not alive:
            return 0
        time.sleep(0.2)
