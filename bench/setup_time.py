"""Session set-up: whole-process ``tsh ssh node true`` against OpenSSH ``ssh localhost true``,
and in one process connect + exec + close through the hub against the same directly."""

from __future__ import annotations

import asyncio
import subprocess
import time

from bench.fixtures import LOGIN, NODE, direct_server, hub_rig, openssh_server, require_openssh
from bench.harness import Context, Figure, benchmark, median, p99, timed
from bench.inproc import connect_direct, connect_via_hub


def _proc(cmd: list[str]) -> None:
    subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)


async def _connect_exec_close(connect: object, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        conn = await connect()  # type: ignore[operator]
        result = await conn.run("true", encoding=None)
        assert result.exit_status == 0
        conn.close()
        await conn.wait_closed()
        out.append((time.perf_counter() - start) * 1000)
    return out


@benchmark("session_setup")
def session_setup(ctx: Context) -> list[Figure]:
    require_openssh()  # before anything starts: no ratio without the reference
    n = ctx.pick(15, 1)
    figures: list[Figure] = []
    with (
        hub_rig(ctx.workdir) as rig,
        direct_server(rig) as port,
        openssh_server(ctx.workdir) as sshd,
    ):
        tsh = [
            timed(lambda: _proc(rig.tsh("ssh", f"{LOGIN}@{NODE}", "true"))) * 1000 for _ in range(n)
        ]
        ssh = [timed(lambda: _proc(sshd.ssh("true"))) * 1000 for _ in range(n)]
        ref, ref_name = median(ssh), "OpenSSH ssh direct"
        figures.append(
            Figure("session_setup", "OpenSSH ssh localhost true", "ms", ref, p99(ssh), ssh)
        )
        figures.append(
            Figure(
                "session_setup",
                "tsh ssh node true (via hub)",
                "ms",
                median(tsh),
                p99(tsh),
                tsh,
                reference=ref_name,
                ratio=median(tsh) / ref if ref else None,
                goal="<= 1.5x OpenSSH",
                met=None if ctx.smoke or not ref else median(tsh) / ref <= 1.5,
            )
        )
        direct = asyncio.run(_connect_exec_close(lambda: connect_direct(rig, port), n))
        via_hub = asyncio.run(_connect_exec_close(lambda: connect_via_hub(rig), n))
        figures.append(
            Figure("session_setup", "in-process direct", "ms", median(direct), p99(direct), direct)
        )
        figures.append(
            Figure(
                "session_setup",
                "in-process via hub",
                "ms",
                median(via_hub),
                p99(via_hub),
                via_hub,
                reference="in-process direct",
                ratio=median(via_hub) / median(direct),
            )
        )
    return figures
