"""A device's first start before the hub can be reached (its modem still coming up, the
hub restarting): the agent tries the join again, one warning line per try, and joins
once the hub is back; a flag error is found before the token is spent. Real hub, real
agent, on loopback (docs/edge-agent.md, "Joining")."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from helpers import BIN, Cluster, free_port, stop_process, wait_for


def _first_start(cluster: Cluster, pin: str, *extra: str) -> list[str]:
    return [
        str(BIN / "edge-agent"),
        "start",
        "--data-dir",
        str(cluster.root / "agent-late"),
        "--name",
        "late",
        "--reconnect-max",
        "1",
        "--hub",
        cluster.addr,
        "--ca-pin",
        pin,
        *extra,
    ]


def test_the_first_join_waits_for_the_hub_and_flag_errors_keep_the_token(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path, free_port())
    cluster.start_hub()
    try:
        pin, token = cluster.ca_pin(), cluster.token()
        env = cluster.env(REMOTELER_JOIN_TOKEN=token)
        # A flag error on the first start: refused before the join, the token kept.
        bad = subprocess.run(
            _first_start(cluster, pin, "--resume-buffer", "1"),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert bad.returncode != 0 and bad.stderr.count("\n") == 1, bad.stderr
        assert "--resume-buffer" in bad.stderr
        cluster.kill_hub()  # the hub is down when the device first starts
        log = tmp_path / "agent-late.log"
        cluster.logs.append(log)
        with log.open("ab") as out:
            agent = subprocess.Popen(
                _first_start(cluster, pin), stdout=out, stderr=subprocess.STDOUT, env=env
            )
        cluster.agents["late"] = agent
        wait_for(
            lambda: log.read_text().count("cannot join yet") >= 2,
            timeout=30,
            what="two join retries",
        )
        assert agent.poll() is None, log.read_text()
        assert "cannot reach the hub at" in log.read_text()
        cluster.start_hub()
        wait_for(lambda: cluster.node_online("late"), timeout=60, what="late joined and online")
        assert agent.poll() is None
        assert token not in cluster.all_logs()  # retries log the error, never the token
    finally:
        cluster.stop()


def test_ctrl_c_while_the_join_retries_ends_with_one_line(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, free_port())  # no hub: the port is closed
    env = cluster.env(REMOTELER_JOIN_TOKEN="0123456789abcdef0123456789abcdef")
    agent = subprocess.Popen(
        _first_start(cluster, "sha256:" + "0" * 64),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert agent.stderr is not None
        assert "cannot join yet" in agent.stderr.readline()
        agent.send_signal(signal.SIGINT)
        rest = agent.stderr.read()
        assert agent.wait(timeout=30) == 130
        lines = [line for line in rest.splitlines() if "cannot join yet" not in line]
        assert lines == ["edge-agent: interrupted; start it again to carry on"], rest
    finally:
        stop_process(agent)
