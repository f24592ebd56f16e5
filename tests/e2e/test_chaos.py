"""Chaos: the real hub and edge agent with a fault proxy on the tunnel's path.

The agent dials the hub through :class:`faultproxy.FaultProxy` (tsh and tctl talk to
the hub directly), with heartbeats every 1 s and 3 allowed misses, so both ends must
call a silent tunnel dead within 3 s. One hub, agent and proxy serve the whole
module; every test starts from a working tunnel and leaves the faults cleared.
Every session that worked is remembered, and the last test checks that each one's
audit events reached the hub exactly once and the agent's outbox drained.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import sqlite3
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from faultproxy import FaultProxy
from helpers import BIN, Cluster, free_port, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name
NODE = "dev"
HEARTBEAT, MISSES, RECONNECT_MAX = 1.0, 3, 2.0
#: Silence after which each end declares the tunnel dead.
DEAD = HEARTBEAT * MISSES
#: Room for two loaded cores: process start-up, a log line's flush, a poll interval.
SLACK = 5.0
#: A reconnect attempt that began inside the blackhole waits for open_ws's timeout.
CONNECT_TIMEOUT = 15.0
#: Back after the link is: the worst attempt in flight, the backoff, slack.
RECOVERY = CONNECT_TIMEOUT + RECONNECT_MAX + SLACK
HUB_TYPES = {"join", "user.login", "cert.create"}


@dataclass
class Rig:
    cluster: Cluster
    proxy: FaultProxy
    #: commands (``echo <marker>``) of sessions that ran to completion through the tunnel
    completed: list[str] = field(default_factory=list)
    #: commands of sessions the link cut while they ran
    cut: list[str] = field(default_factory=list)

    @property
    def agent_log(self) -> str:
        return (self.cluster.root / f"agent-{NODE}.log").read_text(errors="replace")

    def count(self, needle: str) -> int:
        return self.agent_log.count(needle)

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.cluster.tsh("ssh", f"{ME}@{NODE}", command, timeout=timeout)

    def echo(self, label: str, timeout: float = 60) -> bool:
        """One short session; True (and remembered) if it printed what it should."""
        marker = f"chaos-{label}-{uuid.uuid4().hex[:8]}"
        try:
            run = self.ssh(f"echo {marker}", timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        if run.returncode == 0 and run.stdout == f"{marker}\n":
            self.completed.append(f"echo {marker}")
            return True
        return False

    def wait_working(self, label: str, timeout: float) -> float:
        """Seconds until a session works again; fail after ``timeout``."""
        start = time.monotonic()
        wait_for(lambda: self.echo(label, timeout=30), timeout=timeout, interval=0.3, what=label)
        return time.monotonic() - start

    def hub_online(self) -> bool:
        """The hub's live view, as ``tsh ls`` shows it (its in-memory tunnel registry)."""
        ls = self.cluster.tsh("ls", "--format", "json", timeout=30)
        assert ls.returncode == 0, ls.stderr
        return any(n["name"] == NODE and n["online"] for n in json.loads(ls.stdout))


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    cluster = Cluster(tmp_path_factory.mktemp("chaos"), free_port())
    cluster.start_hub()
    proxy = FaultProxy("127.0.0.1", cluster.hub_port).start()
    try:
        cluster.add_user("chaos", [ME])
        cluster.start_agent(
            NODE,
            "env=chaos",
            None,
            "--heartbeat-interval",
            f"{HEARTBEAT:g}",
            "--allowed-misses",
            str(MISSES),
            "--reconnect-max",
            f"{RECONNECT_MAX:g}",
            # sessions end with the tunnel here, as without resumption: this module
            # is about the tunnel; tests/e2e/test_resume.py is about sessions surviving
            "--resume-grace",
            "0",
            hub=proxy.addr,
        )
        wait_for(lambda: cluster.node_online(NODE), what="agent online through the proxy")
        login = cluster.login("chaos")
        assert login.returncode == 0, login.stderr
        yield Rig(cluster, proxy)
    finally:
        proxy.stop()
        cluster.stop()


@pytest.fixture(autouse=True)
def healthy(rig: Rig) -> Iterator[None]:
    rig.proxy.clear()
    rig.wait_working("ready", timeout=RECOVERY + 10)
    yield
    rig.proxy.clear()


def _start_long_session(rig: Rig) -> tuple[subprocess.Popen[str], str]:
    """A session that runs until the link cuts it; returns once its command is running."""
    marker = f"chaos-cut-{uuid.uuid4().hex[:8]}"
    command = f"echo {marker}; sleep 60"
    proc = subprocess.Popen(
        [str(BIN / "tsh"), "ssh", f"{ME}@{NODE}", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=rig.cluster.env(),
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready, "the long session did not start"
    assert proc.stdout.readline() == f"{marker}\n"
    rig.cut.append(command)
    return proc, command


def test_blackhole_is_detected_by_both_ends_and_the_tunnel_comes_back(rig: Rig) -> None:
    timeouts = rig.count("code=HEARTBEAT_TIMEOUT")
    reconnects = rig.count("reconnecting")
    session, _ = _start_long_session(rig)

    rig.proxy.blackhole(True)
    cut = time.monotonic()
    # The agent: its tunnel fails on silence, it does not wait for TCP to notice.
    wait_for(
        lambda: rig.count("code=HEARTBEAT_TIMEOUT") > timeouts,
        timeout=DEAD + SLACK,
        interval=0.1,
        what="the agent to declare the tunnel dead",
    )
    agent_detect = time.monotonic() - cut
    # The open session ends with one clear line and ssh's 255, never hangs.
    try:
        _, err = session.communicate(timeout=DEAD + SLACK)
    except subprocess.TimeoutExpired:
        session.kill()
        session.communicate()
        raise AssertionError("tsh ssh hung after the tunnel died") from None
    session_end = time.monotonic() - cut
    assert session.returncode == 255, err
    assert f"connection to {NODE!r} lost" in err and "Traceback" not in err, err
    # The hub: the node leaves its live registry (what tsh ls and routing use).
    hub_offline: float | None = None
    deadline = cut + DEAD + SLACK
    while time.monotonic() < deadline:
        if not rig.hub_online():
            hub_offline = time.monotonic() - cut
            break
        time.sleep(0.2)

    rig.proxy.blackhole(False)
    back = rig.wait_working("after-blackhole", timeout=RECOVERY)
    assert rig.count("reconnecting") > reconnects, "the agent logged its reconnect"
    assert rig.hub_online()
    print(
        f"blackhole: agent detected in {agent_detect:.1f}s, session ended in {session_end:.1f}s,"
        f" hub offline in {hub_offline}, back {back:.1f}s after the link"
    )
    assert hub_offline is not None, "the hub kept the dead node in its live registry"


def test_reset_connections_reconnect(rig: Rig) -> None:
    ups = rig.count("tunnel up")
    assert rig.proxy.reset() >= 1
    back = rig.wait_working("after-reset", timeout=RECONNECT_MAX + SLACK + 10)
    assert rig.count("tunnel up") > ups
    assert rig.proxy.stats.resets >= 1
    print(f"reset: back in {back:.1f}s")


def test_half_second_each_way_keeps_working(rig: Rig) -> None:
    timeouts = rig.count("code=HEARTBEAT_TIMEOUT")
    ups = rig.count("tunnel up")
    rig.proxy.delay(0.5)
    # a tunnel made under the latency too: reset, and let the agent redial through it
    rig.proxy.reset()
    wait_for(lambda: rig.count("tunnel up") > ups, timeout=RECOVERY, what="tunnel up, 1 s RTT")
    start = time.monotonic()
    assert rig.echo("delayed"), "a session through a 1 s round-trip tunnel"
    took = time.monotonic() - start
    assert took >= 2.0, "the latency was really there (an SSH handshake is several RTTs)"
    # 1 s round trips under a 3 s dead-tunnel limit: the tunnel itself never failed
    assert rig.count("code=HEARTBEAT_TIMEOUT") == timeouts
    assert rig.hub_online()
    print(f"delay 500 ms each way: tsh ssh echo took {took:.1f}s")


def _outbox_depth(rig: Rig) -> int:
    path = rig.cluster.root / f"agent-{NODE}" / "audit.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        db.close()


def _node(rig: Rig) -> dict[str, Any]:
    nodes = rig.cluster.tctl_json("nodes", "ls")
    return dict(next(n for n in nodes if n["name"] == NODE))


def test_audit_outbox_drains_exactly_once_after_faults(rig: Rig) -> None:
    # A session with output (recording chunks) over a thin link, cut right after by a
    # reset: the forwarder loses a batch in flight and must send it again.
    rig.proxy.bandwidth(64_000)
    marker = f"chaos-bulk-{uuid.uuid4().hex[:8]}"
    command = f"head -c 60000 /dev/urandom | base64; echo {marker}"
    run = rig.ssh(command)
    assert run.returncode == 0 and run.stdout.endswith(f"{marker}\n"), run.stderr
    rig.completed.append(command)
    rig.proxy.reset()
    rig.proxy.clear()
    rig.wait_working("after-bulk", timeout=RECONNECT_MAX + SLACK + 10)

    wait_for(lambda: _outbox_depth(rig) == 0, timeout=30, interval=0.2, what="outbox drained")
    # the backlog the hub shows comes with the heartbeat status, stored every 5 s
    wait_for(
        lambda: (n := _node(rig))["online"] and n["audit_pending"] == 0,
        timeout=20,
        interval=0.5,
        what="tctl nodes ls: online, backlog 0",
    )

    events: list[dict[str, Any]] = rig.cluster.tctl_json(
        "audit", "search", "--node", NODE, "--limit", "100000"
    )
    ids = Counter(e["id"] for e in events)
    assert all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]
    device = [e for e in events if e["type"] not in HUB_TYPES]
    seqs = sorted(e["seq"] for e in device)
    assert seqs == list(range(1, len(seqs) + 1)), "a device event is missing or repeated"

    by_session: dict[str, Counter[str]] = {}
    for e in device:
        if e["session"]:
            by_session.setdefault(e["session"], Counter())[e["type"]] += 1
    execs = Counter(e["fields"].get("command") for e in device if e["type"] == "exec")
    sessions = {e["fields"].get("command"): e["session"] for e in device if e["type"] == "exec"}
    assert rig.completed, "earlier tests ran sessions"
    for command in rig.completed + rig.cut:
        assert execs[command] == 1, (command, execs[command])
        types = by_session[sessions[command]]
        assert types["session.start"] == 1 and types["session.end"] == 1, (command, types)
    # the tunnel's own ups and downs are on record too
    assert sum(e["type"] == "tunnel.disconnect" for e in device) >= 2
    print(
        f"audit: {len(device)} device events, {len(rig.completed)} sessions completed and "
        f"{len(rig.cut)} cut, each delivered once"
    )
