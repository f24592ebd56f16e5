"""``hub start --workers N``: N hub processes on one host sharing the listening port.

Each worker is a full member of the cluster (its own hub id ``ID-wI``, its own peer
port, the shared storage); the kernel spreads new connections over them with
SO_REUSEPORT, and a session that lands on a worker not holding the node's tunnel
takes a peer hop over loopback (docs/cluster.md, "Several cores"). Worker 0 alone
writes the data dir's admin identity and address file (hub/app.py).

This process only supervises: it starts the workers, passes SIGTERM/SIGINT on (each
drains as a single hub does; any still running :data:`KILL_AFTER` seconds past their
``--shutdown-grace`` are killed), and starts a worker that died again after a backoff
(1 s, doubling to :data:`MAX_RESTART_DELAY`, reset once it ran a minute). A worker
gets SIGTERM if the supervisor itself dies (Linux's parent-death signal), so no
orphan keeps a worker's hub id.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from hub.hubid import load_hub_id
from remoteler.addr import format_hostport, parse_hostport
from remoteler.errors import UsageError

log = logging.getLogger("remoteler.hub.workers")

#: Most workers (a hub process uses one core; more than the machine has only costs).
MAX_WORKERS = 64
#: Seconds before a worker that died is started again, at first ...
RESTART_DELAY = 1.0
#: ... doubling on each quick death up to this.
MAX_RESTART_DELAY = 30.0
#: A worker that ran this long resets its backoff.
STABLE_AFTER = 60.0
#: Seconds past --shutdown-grace after which a worker still running is killed.
KILL_AFTER = 30.0
#: prctl(2) option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


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


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


@dataclass
class _Worker:
    index: int
    proc: subprocess.Popen[bytes]
    started: float
    delay: float = RESTART_DELAY
    died_at: float | None = None


def supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``args.workers`` workers until SIGTERM/SIGINT; 0 if every worker stopped
    cleanly, else 1."""
    check(args)
    base_id = load_hub_id(Path(args.data_dir), args.hub_id)
    stopping: list[int] = []  # the signal, once one came
    workers: dict[int, _Worker] = {}

    def spawn(index: int) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "hub.cli", *argv, *worker_settings(args, index, base_id)]
        proc = subprocess.Popen(cmd, preexec_fn=_die_with_parent)
        log.info("worker started", extra={"worker": index, "pid": proc.pid})
        if stopping:  # the signal came while it was starting: it must hear it too
            proc.send_signal(stopping[0])
        return proc

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not stopping:
            stopping.append(signum)
        for worker in workers.values():
            if worker.proc.poll() is None:
                worker.proc.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for index in range(args.workers):
        workers[index] = _Worker(index, spawn(index), time.monotonic())
    stop_deadline: float | None = None
    while True:
        now = time.monotonic()
        running = [w for w in workers.values() if w.proc.poll() is None]
        if stopping:
            if not running:
                # a worker still starting when the signal came dies of it: clean too
                clean = {0, -signal.SIGTERM, -signal.SIGINT}
                codes = [w.proc.returncode for w in workers.values()]
                return 0 if all(c in clean for c in codes) else 1
            if stop_deadline is None:
                stop_deadline = now + max(0.0, args.shutdown_grace) + KILL_AFTER
            elif now > stop_deadline:
                for worker in running:
                    log.warning("worker still running: killed", extra={"worker": worker.index})
                    worker.proc.kill()
        else:
            for worker in workers.values():
                if worker.proc.poll() is None:
                    continue
                if worker.died_at is None:
                    worker.died_at = now
                    if now - worker.started >= STABLE_AFTER:
                        worker.delay = RESTART_DELAY
                    log.warning(
                        "worker exited; starting it again",
                        extra={
                            "worker": worker.index,
                            "code": worker.proc.returncode,
                            "in_s": worker.delay,
                        },
                    )
                elif now - worker.died_at >= worker.delay:
                    worker.proc = spawn(worker.index)
                    worker.started, worker.died_at = now, None
                    worker.delay = min(MAX_RESTART_DELAY, worker.delay * 2)
        time.sleep(0.2)
