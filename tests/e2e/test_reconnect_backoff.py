"""Backoff after a short-lived tunnel: the real hub and agent, a fault proxy resetting the link.

A tunnel that was up for one heartbeat interval worked, so the next reset starts
the backoff again: the agent redials within about a second each time, however
many such resets came before. Before, the attempt count carried over until a
tunnel had lived 30 s, and the fifth reset in a row waited up to 16 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from faultproxy import FaultProxy
from helpers import Cluster, free_port, wait_for

NODE = "flaky"
HEARTBEAT = 0.5
RESETS = 6
#: First redial within 1 s (jittered) + a TLS dial, with room for two loaded cores.
REDIAL_BOUND = 3.0


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, FaultProxy]]:
    cluster = Cluster(tmp_path_factory.mktemp("backoff"), free_port())
    cluster.start_hub()
    proxy = FaultProxy("127.0.0.1", cluster.hub_port).start()
    try:
        cluster.start_agent(
            NODE,
            "",
            None,
            "--heartbeat-interval",
            f"{HEARTBEAT:g}",
            "--allowed-misses",
            "4",
            "--reconnect-max",  # the default cap (the helper's 1 s would hide the backoff)
            "60",
            hub=proxy.addr,
        )
        yield cluster, proxy
    finally:
        proxy.stop()
        cluster.stop()


def test_redial_within_a_second_after_each_reset_of_a_tunnel_that_lived_a_heartbeat(
    rig: tuple[Cluster, FaultProxy],
) -> None:
    cluster, proxy = rig
    log = cluster.root / f"agent-{NODE}.log"

    def ups() -> int:
        return log.read_text(errors="replace").count("tunnel up")

    wait_for(lambda: ups() >= 1, timeout=30, what="first tunnel")
    waits = []
    for _ in range(RESETS):
        before = ups()
        time.sleep(HEARTBEAT * 1.5)  # the tunnel lives past one heartbeat interval
        assert proxy.reset() >= 1
        cut = time.monotonic()
        wait_for(lambda: ups() > before, timeout=40, interval=0.02, what="redial")  # noqa: B023
        waits.append(round(time.monotonic() - cut, 2))
    assert max(waits) < REDIAL_BOUND, f"redial after each reset took {waits} s"
