"""Relay throughput: bytes through ``tsh ssh node 'cat > /dev/null'`` via the hub,
against the same asyncssh server reached directly and OpenSSH ssh to sshd.

Throughput = size / (wall time of the whole client process - its median set-up
time for ``true``), so start-up cost is not counted as transfer time.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.fixtures import (
    LOGIN,
    NODE,
    direct_client,
    direct_server,
    hub_rig,
    openssh_server,
    require_openssh,
)
from bench.harness import Context, Figure, benchmark, median, rate_mib_s, ratio, timed

MiB = 1 << 20
CIPHERS = {"aes128-gcm": "aes128-gcm@openssh.com", "chacha20": "chacha20-poly1305@openssh.com"}


def _run(cmd: list[str], stdin: Path | None = None) -> None:
    with open(stdin or "/dev/null", "rb") as f:
        proc = subprocess.run(cmd, stdin=f, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.decode(errors='replace')[-300:]}")


def _throughput(
    cmd_for: dict[str, list[str]], payload: Path, size: int, repeats: int
) -> tuple[float, list[float]]:
    setup = median([timed(lambda: _run(cmd_for["true"])) for _ in range(repeats)])
    rates = []
    for _ in range(repeats):
        wall = timed(lambda: _run(cmd_for["cat"], payload))
        rates.append(rate_mib_s(size, wall, setup))
    return median(rates), rates


@benchmark("relay_throughput")
def relay_throughput(ctx: Context) -> list[Figure]:
    require_openssh()  # before anything starts: the reference rows are not optional
    size = ctx.pick(int(os.environ.get("BENCH_RELAY_MIB", "1024")) * MiB, 1 * MiB)
    payload = ctx.workdir / "payload"
    with open(payload, "wb") as f:
        f.truncate(size)  # sparse zeros: the SSH layer encrypts them, so nothing compresses
    # smoke: the first cipher alone runs every line (the second is the same code)
    ciphers = ctx.pick(CIPHERS, dict(list(CIPHERS.items())[:1]))
    figures: list[Figure] = []
    with (
        hub_rig(ctx.workdir) as rig,
        direct_server(rig) as port,
        openssh_server(ctx.workdir) as sshd,
    ):
        for label, cipher in ciphers.items():
            direct_cmds = {
                k: [*direct_client(rig, port, c)[:-2], "--cipher", cipher, f"{LOGIN}@{NODE}", c]
                for k, c in (("true", "true"), ("cat", "cat > /dev/null"))
            }
            hub_cmds = {
                k: rig.tsh("ssh", "-c", cipher, f"{LOGIN}@{NODE}", c)
                for k, c in (("true", "true"), ("cat", "cat > /dev/null"))
            }
            direct, d_samples = _throughput(direct_cmds, payload, size, ctx.repeats)
            hub, h_samples = _throughput(hub_cmds, payload, size, ctx.repeats)
            ref = f"asyncssh direct ({label})"
            figures.append(Figure("relay_throughput", ref, "MiB/s", direct, samples=d_samples))
            figures.append(
                Figure(
                    "relay_throughput",
                    f"tsh via hub ({label})",
                    "MiB/s",
                    hub,
                    samples=h_samples,
                    reference=ref,
                    ratio=ratio(hub, direct),
                    goal=">= 0.8x direct",
                    met=None if ctx.smoke else hub / direct >= 0.8,
                )
            )
            ssh_cmds = {
                k: sshd.ssh(c, cipher) for k, c in (("true", "true"), ("cat", "cat > /dev/null"))
            }
            openssh, o_samples = _throughput(ssh_cmds, payload, size, ctx.repeats)
            figures.append(
                Figure(
                    "relay_throughput",
                    f"OpenSSH direct ({label})",
                    "MiB/s",
                    openssh,
                    samples=o_samples,
                )
            )
    return figures
