"""SIGTERM on the hub: open sessions get their grace period, agents come back spread out."""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import time
from pathlib import Path

from helpers import BIN, Cluster, free_port, stop_process, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name


def test_sigterm_drains_sessions_and_spreads_reconnects(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, free_port())
    cluster.start_hub("--shutdown-grace", "20", "--drain-spread", "3")
    try:
        cluster.add_user("alice", [ME])
        assert cluster.login("alice").returncode == 0
        for name in ("d1", "d2"):
            cluster.start_agent(name, "env=lab")
        wait_for(lambda: cluster.node_online("d1") and cluster.node_online("d2"), what="online")

        session = subprocess.Popen(
            [str(BIN / "tsh"), "ssh", f"{ME}@d1", "sleep 3; echo finished"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cluster.env(),
        )
        try:
            wait_for(
                lambda: "session relay start" in (cluster.root / "hub.log").read_text(),
                what="session to start",
            )
            assert cluster.hub is not None
            hub = cluster.hub
            stopped_at = time.monotonic()
            hub.send_signal(signal.SIGTERM)
            # The session outlives the SIGTERM and ends normally.
            out, err = session.communicate(timeout=30)
        finally:
            stop_process(session)
        assert (session.returncode, out) == (0, "finished\n"), err
        hub.wait(timeout=30)
        assert hub.returncode == 0
        assert time.monotonic() - stopped_at >= 1.0  # it waited for the session
        cluster.hub = None

        log = (cluster.root / "hub.log").read_text()
        assert "draining" in log
        # Both agents were told when to come back: within the 3 s spread, not at once.
        for name in ("d1", "d2"):
            agent_log = (cluster.root / f"agent-{name}.log").read_text()
            asked = re.search(r"hub restarting.* retry_after=([0-9.]+)", agent_log)
            assert asked is not None, agent_log
            assert 1.0 <= float(asked.group(1)) <= 3.0

        cluster.start_hub()
        restarted = time.monotonic()
        wait_for(
            lambda: cluster.node_online("d1") and cluster.node_online("d2"),
            timeout=30,
            what="agents back after the restart",
        )
        assert time.monotonic() - restarted < 25
        run = cluster.tsh("ssh", f"{ME}@d2", "echo back")
        assert run.stdout == "back\n", run.stderr
    finally:
        cluster.stop()
