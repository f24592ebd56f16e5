"""Slow and flaky links: the real hub and agent, the tunnel through a fault proxy.

One hub, agent (heartbeat every 0.5 s, the default 60 s backoff cap) and proxy
serve the module.

*Interactive sessions first.*
The agent's tunnel runs through :class:`faultproxy.FaultProxy` capped at 10 KiB/s
each way with an 8 KiB link buffer. One session downloads random bytes as fast as
the link allows (its output is recorded too, so the recording upload competes on
the same link); meanwhile a keystroke on another session must come back. Before
the link pacer a lone bulk channel's 256 KiB frames (25 s each) and the kernel's
send queue kept echoes away for tens of seconds; the bound here is generous.

*Backoff after a short-lived tunnel.* A tunnel that was up for one heartbeat
interval worked, so the next reset starts the backoff again: the agent redials
within about a second each time, however many such resets came before. Before,
the attempt count carried over until a tunnel had lived 30 s: the agent's log
showed attempt 1, 2, 3... and the third reset in a row waited up to 8 s.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from helpers import Cluster, free_port, wait_for

from remoteler.identity import read_identity_file
from tsh.ssh import open_ssh

LOGIN = pwd.getpwuid(os.geteuid()).pw_name
NODE = "slow"
RATE = 10 * 1024
#: Correctness bound, not a timing goal (the bench measures: ~1 s, the link buffer).
ECHO_BOUND = 8.0
HEARTBEAT = 0.5
#: Resets in a row; the attempt count the agent logs says whether the backoff
#: restarted (before, it grew 1, 2, 3...), so a few are enough.
RESETS = 3
ATTEMPT = re.compile(r"reconnecting .*?in_s=[0-9.]+ attempt=(\d+)")
#: First redial within 1 s (jittered) + a TLS dial, with room for two loaded cores.
REDIAL_BOUND = 3.0


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Cluster, Path, FaultProxy]]:
    cluster = Cluster(tmp_path_factory.mktemp("slowlink"), free_port())
    cluster.start_hub()
    proxy = FaultProxy("127.0.0.1", cluster.hub_port, link_buffer=8 * 1024).start()
    try:
        cluster.add_user("op", [LOGIN])
        cluster.start_agent(
            NODE,
            "",
            None,
            "--heartbeat-interval",
            f"{HEARTBEAT:g}",
            "--allowed-misses",
            "20",  # 10 s: a loaded machine may starve a process for seconds
            "--reconnect-max",  # the default cap (the helper's 1 s would hide the backoff)
            "60",
            hub=proxy.addr,
        )
        log = cluster.root / f"agent-{NODE}.log"
        wait_for(lambda: "tunnel up" in log.read_text(errors="replace"), timeout=30)
        identity = cluster.root / "op-id"
        signed = cluster.tctl("auth", "sign", "--user", "op", "--ttl", "1h", "-o", str(identity))
        assert signed.returncode == 0, signed.stderr
        yield cluster, identity, proxy
    finally:
        proxy.clear()
        proxy.stop()
        cluster.stop()


async def _echoes_beside_a_download(
    cluster: Cluster, identity: Path, proxy: FaultProxy
) -> tuple[list[float], int]:
    """Echo round trips (s) while a download runs, and the bytes the link carried up."""
    ident = read_identity_file(identity)
    bulk_conn, tty_conn = await asyncio.gather(
        open_ssh(cluster.addr, ident, LOGIN, NODE), open_ssh(cluster.addr, ident, LOGIN, NODE)
    )
    got = [0]

    async def drain(stream: asyncio.StreamReader) -> None:
        while data := await stream.read(65536):
            got[0] += len(data)

    try:
        tty = await tty_conn.create_process("cat", encoding=None)
        proxy.bandwidth(RATE)  # slow before any bulk: the tunnel never saw a fast transfer
        bulk = await bulk_conn.create_process("head -c 20000000 /dev/urandom", encoding=None)
        reader = asyncio.ensure_future(drain(bulk.stdout))
        await asyncio.sleep(1)  # the download fills every queue on the path (8 KiB: 0.8 s)
        up = proxy.stats.bytes_up
        rtts = []
        for _ in range(2):
            started = time.monotonic()
            tty.stdin.write(b"k")
            try:
                await asyncio.wait_for(tty.stdout.readexactly(1), ECHO_BOUND)
            except TimeoutError:
                rtts.append(float("inf"))
                break
            rtts.append(round(time.monotonic() - started, 2))
        reader.cancel()
        return rtts, proxy.stats.bytes_up - up
    finally:
        for conn in (bulk_conn, tty_conn):
            conn.close()


def test_keystrokes_come_back_while_a_download_and_its_recording_fill_the_link(
    rig: tuple[Cluster, Path, FaultProxy],
) -> None:
    cluster, identity, proxy = rig
    rtts, carried = asyncio.run(_echoes_beside_a_download(cluster, identity, proxy))
    # the link stayed busy with the download (SSH delivers it in 32 KiB packets)
    assert carried > 10_000, f"the link carried only {carried} bytes"
    assert max(rtts) < ECHO_BOUND, f"echo round trips {rtts} s beside a download at 10 KiB/s"


def test_redial_within_a_second_after_each_reset_of_a_tunnel_that_lived_a_heartbeat(
    rig: tuple[Cluster, Path, FaultProxy],
) -> None:
    cluster, _, proxy = rig
    proxy.clear()
    log = cluster.root / f"agent-{NODE}.log"

    def ups() -> int:
        return log.read_text(errors="replace").count("tunnel up")

    def up_now() -> bool:
        text = log.read_text(errors="replace")
        down = max(text.rfind("tunnel closed"), text.rfind("tunnel failed"))
        return text.rfind("tunnel up") > down

    # the download above may have cost the tunnel (its backoff then still runs):
    # start from a tunnel that is up, or the first reset would hit a dial
    wait_for(up_now, timeout=40, interval=0.05, what="the agent's tunnel up")
    waits, attempts = [], []
    for _ in range(RESETS):
        before = ups()
        time.sleep(HEARTBEAT * 1.2)  # the tunnel lives past one heartbeat interval
        assert proxy.reset() >= 1
        cut = time.monotonic()
        wait_for(lambda: ups() > before, timeout=40, interval=0.02, what="redial")  # noqa: B023
        waits.append(round(time.monotonic() - cut, 2))
        # the agent logs the attempt each wait was drawn for: 1 (from 0) every time
        attempts.append(int(ATTEMPT.findall(log.read_text(errors="replace"))[-1]))
    assert attempts == [1] * RESETS, f"backoff attempt after each reset: {attempts}"
    assert max(waits) < REDIAL_BOUND, f"redial after each reset took {waits} s"
