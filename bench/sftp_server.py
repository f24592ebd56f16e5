"""The agent's built-in SFTP server against OpenSSH's ``sftp-server``, alone.

Each server is driven by OpenSSH's ``sftp`` client over ``sftp -D`` (a local
socket pair: no SSH, no hub), so the figures are the server's own cost:

* transfer: ``put`` then ``get`` of one file (64 MiB; 1 MiB in smoke runs),
  MiB/s of the round trip (both directions' bytes over the wall time);
* start-up: process start to the VERSION reply to INIT, and its RSS then (the
  built-in one is a Python interpreter importing asyncssh, once per session).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import Context, Figure, benchmark, median

OPENSSH = "/usr/lib/openssh/sftp-server"
BUILTIN = [sys.executable, "-I", "-m", "edge_agent.sftp_child"]


def _start_and_rss(argv: list[str]) -> tuple[float, float]:
    """Seconds to the VERSION reply, and RSS in MiB then."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin and proc.stdout
    try:
        proc.stdin.write(struct.pack(">IBI", 5, 1, 3))  # INIT, version 3
        proc.stdin.flush()
        (n,) = struct.unpack(">I", proc.stdout.read(4))
        proc.stdout.read(n)
        took = time.perf_counter() - started
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss = int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1])
        return took, rss / 1024
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def _round_trip(workdir: Path, server: str, size: int) -> float:
    """Wall seconds of ``sftp -D server`` putting then getting a ``size``-byte file."""
    batch = workdir / "batch"
    batch.write_text("put data data.up\nget data.up data.down\n")
    started = time.perf_counter()
    subprocess.run(
        ["sftp", "-q", "-D", server, "-b", str(batch)],
        cwd=workdir,
        check=True,
        capture_output=True,
        timeout=600,
    )
    took = time.perf_counter() - started
    assert (workdir / "data.down").stat().st_size == size
    return took


@benchmark("sftp_server")
def sftp_server(ctx: Context) -> list[Figure]:
    assert shutil.which("sftp"), "OpenSSH's sftp client missing: apt-get install openssh-client"
    assert os.access(OPENSSH, os.X_OK), f"{OPENSSH} missing: apt-get install openssh-sftp-server"
    size = ctx.pick(64 << 20, 1 << 20)
    with (ctx.workdir / "data").open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    builtin = ctx.workdir / "builtin.sh"  # sftp -D runs one program path
    builtin.write_text(f"#!/bin/sh\nexec {' '.join(BUILTIN)}\n")
    builtin.chmod(0o755)
    figures = []
    rates: dict[str, float] = {}
    for name, server in (("OpenSSH sftp-server", OPENSSH), ("built-in", str(builtin))):
        walls = [_round_trip(ctx.workdir, server, size) for _ in range(ctx.repeats)]
        rates[name] = 2 * size / (1 << 20) / median(walls)
    for name, rate in rates.items():
        ref = rates["OpenSSH sftp-server"]
        figures.append(
            Figure(
                "sftp_server",
                f"{name}: put+get via sftp -D",
                "MiB/s",
                rate,
                reference=None if name.startswith("OpenSSH") else "OpenSSH sftp-server",
                ratio=None if name.startswith("OpenSSH") else rate / ref,
                note=f"{size >> 20} MiB each way",
            )
        )
    for name, argv in (("OpenSSH sftp-server", [OPENSSH]), ("built-in", BUILTIN)):
        samples = [_start_and_rss(argv) for _ in range(ctx.repeats)]
        figures.append(
            Figure("sftp_server", f"{name}: start to VERSION", "ms",
                   median([s[0] * 1000 for s in samples]))
        )  # fmt: skip
        figures.append(
            Figure(
                "sftp_server", f"{name}: RSS per session", "MiB", median([s[1] for s in samples])
            )
        )
    return figures
