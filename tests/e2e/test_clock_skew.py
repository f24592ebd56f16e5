"""Devices with wrong clocks (docs/tunnels.md, "Clock skew"): real agents under
libfaketime against a real hub, all on loopback.

One hub for the module. Each agent joins with the right clock, then runs again
under ``faketime``: 20 minutes behind and a day ahead it connects, serves
``tsh ssh``, stamps its audit events in hub time and reports its skew; 30 days
behind (beyond the 24 h bound) it says so in one line.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import BIN, Cluster, free_port, stop_process, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name
#: (node name, libfaketime offset, expected skew in seconds)
SKEWED = (("late", "-20m", -1200.0), ("ahead", "+1d", 86400.0))


def _faketime() -> str:
    path = shutil.which("faketime")
    if path is None:
        pytest.fail("faketime is missing: install the Debian package 'faketime' (libfaketime)")
    return path


def _start_faked(
    cluster: Cluster, name: str, offset: str, pin: str = "", reconnect_max: str = "1"
) -> subprocess.Popen[Any]:
    """Start an agent under libfaketime's ``offset`` (joining on its first start)."""
    log = cluster.root / f"agent-{name}.log"
    cluster.logs.append(log)
    data = cluster.root / f"agent-{name}"
    env = cluster.env(FAKETIME_DONT_FAKE_MONOTONIC="1")
    args = [
        _faketime(),
        "-f",
        offset,
        str(BIN / "edge-agent"),
        "start",
        "--data-dir",
        str(data),
        "--name",
        name,
        "--reconnect-max",
        reconnect_max,
        # the skew reaches the hub with the heartbeat after the first answer
        "--heartbeat-interval",
        "1",
        "--allowed-misses",
        "5",
    ]
    if not (data / "identity" / "node.json").exists():
        args += ["--hub", cluster.addr, "--ca-pin", pin]
        env["REMOTELER_JOIN_TOKEN"] = cluster.token()
    proc = subprocess.Popen(
        args,
        stdout=open(log, "ab"),  # noqa: SIM115 - the child keeps it
        stderr=subprocess.STDOUT,
        env=env,
    )
    cluster.agents[name] = proc
    return proc


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _faketime()
    cluster = Cluster(tmp_path_factory.mktemp("clock"), free_port())
    cluster.start_hub()
    try:
        cluster.add_user("alice", [ME])
        # Devices without a real-time clock join as they are (the hub's CA is
        # minutes old: OpenSSL alone refuses it 20 minutes behind).
        pin = cluster.ca_pin()
        for name, offset, _ in SKEWED:
            _start_faked(cluster, name, offset, pin)
        _start_faked(cluster, "future", "+30d", pin)  # OpenSSL accepts the year-long hub cert
        # 30 days behind it could not join: it joined earlier, then lost its clock.
        cluster.start_agent("stale", "env=lab")
        joined = cluster.root / "agent-stale" / "identity" / "node.json"
        wait_for(joined.exists, interval=0.2, what="stale joined")
        stop_process(cluster.agents.pop("stale"))
        _start_faked(cluster, "stale", "-30d", reconnect_max="30")  # one error line is enough
        assert cluster.login("alice").returncode == 0
        yield cluster
    finally:
        cluster.stop()


def _node(cluster: Cluster, name: str) -> dict[str, Any]:
    nodes = cluster.tctl_json("nodes", "ls")
    return next(n for n in nodes if n["name"] == name)


@pytest.mark.parametrize(("name", "skew"), [(n, s) for n, _, s in SKEWED])
def test_skewed_device_connects_serves_ssh_and_audits_in_hub_time(
    skewed: Cluster, name: str, skew: float
) -> None:
    node = wait_for(
        lambda: (n := _node(skewed, name))["online"] and n["clock_skew"] is not None and n,
        timeout=30,
        what=f"{name} online with its skew",
    )
    assert abs(node["clock_skew"] - skew) <= 30, node

    run = skewed.tsh("ssh", f"{ME}@{name}", "echo hello from the device")
    assert run.returncode == 0, run.stderr + skewed.all_logs()[-3000:]
    assert run.stdout == "hello from the device\n"

    def events(kind: str) -> list[dict[str, Any]]:
        return list(skewed.tctl_json("audit", "search", "--node", name, "--type", kind))

    starts = wait_for(
        lambda: events("session.start"), timeout=30, interval=0.3, what="session.start"
    )
    assert abs(starts[-1]["time"] - time.time()) < 120, "not stamped in the hub's time"
    reports = wait_for(
        lambda: events("clock.skew"), timeout=30, interval=0.3, what="clock.skew event"
    )
    report = reports[-1]
    assert abs(report["fields"]["skew"] - skew) <= 30 and report["fields"]["corrected"] is True
    assert abs(report["time"] - time.time()) < 120
    behind_or_ahead = "behind" if skew < 0 else "ahead of"
    assert "this device's clock is" in report["fields"]["message"]
    assert behind_or_ahead in report["fields"]["message"]


def test_skew_shown_by_tctl_and_tsh(skewed: Cluster) -> None:
    def all_known() -> bool:
        skews = {n["name"]: n["clock_skew"] for n in skewed.tctl_json("nodes", "ls")}
        return all(skews.get(name) for name, _, _ in SKEWED)

    wait_for(all_known, timeout=30, interval=0.3, what="every skew at the hub")
    table = skewed.tctl("nodes", "ls").stdout
    assert "Clock" in table.splitlines()[0]
    rows = {line.split()[0]: line for line in table.splitlines()[1:] if line.strip()}
    assert "-20 min" in rows["late"] and "+24 h" in rows["ahead"], table
    listed = skewed.tsh("ls", "-v")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert "-20 min" in rows["late"] and "+24 h" in rows["ahead"], listed.stdout
    shown = json.loads(skewed.tsh("ls", "--format", "json").stdout)
    assert {n["name"]: round(n["clock_skew"] or 0, -2) for n in shown}["late"] == -1200


def test_beyond_the_bound_the_error_names_the_skew(skewed: Cluster) -> None:
    log = skewed.root / "agent-stale.log"
    line = "this device's clock is 30 days behind the hub's"
    wait_for(
        lambda: line in log.read_text(errors="replace"), timeout=30, interval=0.3, what="error"
    )
    text = log.read_text(errors="replace")
    assert "Traceback" not in text
    assert not _node(skewed, "stale")["online"]


def test_a_login_refused_because_of_the_clock_says_so(skewed: Cluster) -> None:
    wait_for(lambda: _node(skewed, "future")["clock_skew"], timeout=30, interval=0.3, what="future")
    run = skewed.tsh("ssh", f"{ME}@future", "true")
    assert run.returncode != 0
    assert "this device's clock is 30 days ahead of the hub's" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    refusals = skewed.tctl_json("audit", "search", "--node", "future", "--type", "auth.failed")
    assert any("30 days ahead" in e["fields"]["reason"] for e in refusals), refusals
