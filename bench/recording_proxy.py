"""What the hub's recording proxy costs: output through ``tsh ssh node 'cat FILE'``
end to end (the hub relays ciphertext) against the same node in ``--recording proxy``
mode (the hub decrypts, records in 64 KiB chunks to its audit store, re-encrypts).

Throughput = size / (wall time of the whole tsh process - its median set-up time
for ``true`` in the same mode), as in bench/relay.py. The payload is random, so
the recording's zlib cannot shrink it: the worst case for the store.
"""

from __future__ import annotations

import os
import subprocess

from bench.fixtures import LOGIN, NODE, hub_rig
from bench.harness import Context, Figure, benchmark, median, rate_mib_s, ratio, timed

MiB = 1 << 20


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {proc.stderr.decode(errors='replace')[-300:]}")


@benchmark("recording_proxy")
def recording_proxy(ctx: Context) -> list[Figure]:
    size = ctx.pick(int(os.environ.get("BENCH_RECORDING_MIB", "256")) * MiB, 1 * MiB)
    payload = ctx.workdir / "payload-random"
    with open(payload, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    figures: list[Figure] = []
    with hub_rig(ctx.workdir) as rig:
        rates: dict[str, tuple[float, list[float]]] = {}
        for mode in ("off", "proxy"):
            rig.cluster.tctl("nodes", "set", NODE, "--recording", mode)
            true_cmd = rig.tsh("ssh", f"{LOGIN}@{NODE}", "true")
            cat_cmd = rig.tsh("ssh", f"{LOGIN}@{NODE}", f"cat {payload}")
            setup = median([timed(lambda c=true_cmd: _run(c)) for _ in range(ctx.repeats)])
            samples = [
                rate_mib_s(size, timed(lambda c=cat_cmd: _run(c)), setup)
                for _ in range(ctx.repeats)
            ]
            rates[mode] = (median(samples), samples)
    e2e, e2e_samples = rates["off"]
    proxied, proxied_samples = rates["proxy"]
    ref = "tsh output via hub, end to end"
    figures.append(Figure("recording_proxy", ref, "MiB/s", e2e, samples=e2e_samples))
    figures.append(
        Figure(
            "recording_proxy",
            "tsh output via hub, recording proxy",
            "MiB/s",
            proxied,
            samples=proxied_samples,
            reference=ref,
            ratio=ratio(proxied, e2e),
            note="the hub decrypts, records and re-encrypts every byte",
        )
    )
    return figures
