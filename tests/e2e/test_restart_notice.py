"""A hub restart as users see it: open sessions are told how long they have, new
sessions during the drain are told when to come back, and after a SIGKILL
``tctl nodes ls`` does not keep showing the dead hub's tunnels online."""

from __future__ import annotations

import os
import pwd
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from helpers import BIN, Cluster, free_port, stop_process, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name
GRACE = 8
HUB_FLAGS = ("--shutdown-grace", str(GRACE), "--drain-spread", "1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("restart"), free_port())
    cluster.start_hub(*HUB_FLAGS)
    try:
        cluster.add_user("alice", [ME])
        login = cluster.login("alice")
        assert login.returncode == 0, login.stderr
        cluster.start_agent("d1", "env=lab")
        yield cluster
    finally:
        cluster.stop()


def _hub_running(cluster: Cluster) -> None:
    if cluster.hub is None:
        cluster.start_hub(*HUB_FLAGS)
    wait_for(lambda: cluster.node_online("d1"), timeout=30, what="d1 online")


def test_drain_tells_open_and_new_sessions_when(cluster: Cluster) -> None:
    _hub_running(cluster)
    log = cluster.root / "hub.log"
    starts = log.read_text().count("session relay start")
    session = subprocess.Popen(
        [str(BIN / "tsh"), "ssh", f"{ME}@d1", "sleep 5; echo finished"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cluster.env(),
    )
    try:
        wait_for(
            lambda: log.read_text().count("session relay start") > starts, what="session to start"
        )
        assert cluster.hub is not None
        hub = cluster.hub
        hub.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in log.read_text(), what="the drain to start")
        refused = cluster.tsh("ssh", f"{ME}@d1", "echo new", timeout=30)
        out, err = session.communicate(timeout=30)
    finally:
        stop_process(session)
    # The new session: a clear line instead of "cannot reach the hub".
    assert refused.returncode == 255, refused.stderr
    again = re.fullmatch(r"tsh: hub is restarting, try again in (\d+) s\n", refused.stderr)
    assert again is not None, refused.stderr
    assert 1 <= int(again.group(1)) <= GRACE
    # The open session: one notice line with the time left, and it still finishes.
    assert (session.returncode, out) == (0, "finished\n"), err
    notice = re.search(
        r"^tsh: hub restarting: this session ends in (\d+) s; reconnect with the same command$",
        err,
        re.M,
    )
    assert notice is not None, err
    assert GRACE - 2 <= int(notice.group(1)) <= GRACE
    assert hub.wait(timeout=30) == 0
    cluster.hub = None


def test_sigkilled_hub_leaves_no_node_online(cluster: Cluster) -> None:
    _hub_running(cluster)
    cluster.kill_hub(signal.SIGKILL)  # no clean-up: the stored flags still say online
    killed = time.monotonic()
    wait_for(lambda: not cluster.node_online("d1"), timeout=15, what="d1 shown offline")
    assert time.monotonic() - killed < 10
    ls = cluster.tctl("nodes", "ls")
    assert re.search(r"\bd1\b.*\boffline\b", ls.stdout), ls.stdout
    assert "the hub is not running" in ls.stderr, ls.stderr
    assert cluster.tctl_json("status")["nodes_online"] == 0
    # A restarted hub shows the node online again once its tunnel is back.
    _hub_running(cluster)
