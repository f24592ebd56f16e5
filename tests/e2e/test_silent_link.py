"""A frozen agent link (open, but nothing gets through): ``tsh ssh`` says at once
that the node is not answering, instead of waiting out the channel-open timeout."""

from __future__ import annotations

import os
import pwd
import re
import time
from pathlib import Path

from faultproxy import FaultProxy
from helpers import Cluster, free_port, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name
HEARTBEAT = 1.5
MISSES = 10  # dropped after 15 s of silence; probed after 3 s (hub/linkprobe.py)


def test_frozen_link_is_reported_within_the_probe_deadline(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, free_port())
    cluster.start_hub()
    proxy = FaultProxy("127.0.0.1", cluster.hub_port).start()
    try:
        cluster.add_user("alice", [ME])
        cluster.start_agent(
            "truck-042",
            "env=lab",
            None,
            "--heartbeat-interval",
            f"{HEARTBEAT:g}",
            "--allowed-misses",
            str(MISSES),
            hub=proxy.addr,
        )
        login = cluster.login("alice")
        assert login.returncode == 0, login.stderr
        wait_for(lambda: cluster.node_online("truck-042"), what="agent online through the proxy")
        ok = cluster.tsh("ssh", f"{ME}@truck-042", "echo up", timeout=30)
        assert ok.stdout == "up\n", ok.stderr  # a live link is used as before

        proxy.blackhole(True)  # the link stays open; nothing crosses it any more
        frozen = time.monotonic()
        time.sleep(2 * HEARTBEAT + 0.5)
        asked = time.monotonic()
        run = cluster.tsh("ssh", f"{ME}@truck-042", "echo never", timeout=30)
        took = time.monotonic() - asked
        assert run.returncode == 255, run.stderr
        said = re.fullmatch(
            r"tsh: truck-042 is not answering \(link silent for (\d+) s\); "
            r"it will be marked offline at (\d\d:\d\d:\d\d); try again once it reconnects\n",
            run.stderr,
        )
        assert said is not None, run.stderr
        assert 2 * HEARTBEAT <= int(said.group(1)) <= time.monotonic() - frozen + 1
        # The 2 s probe plus tsh's own start-up, on a loaded machine; before: 15 s.
        assert took < 9, took
    finally:
        proxy.stop()
        cluster.stop()
