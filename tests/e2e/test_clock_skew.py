"""Devices with wrong clocks (docs/tunnels.md, "Clock skew"): real agents under
libfaketime against a real hub, all on loopback.

One hub for the module. Each agent joins with the right clock, then runs again
under ``faketime``: 20 minutes behind and a day ahead it connects, serves
``tsh ssh``, stamps its audit events in hub time and reports its skew; 30 days
behind (beyond the 24 h bound) it says so in one line.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from helpers import BIN, Cluster, free_port, stop_process, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name
#: (node name, libfaketime offset, expected skew in seconds)
SKEWED = (("late", "-20m", -1200.0), ("ahead", "+1d", 86400.0))


def _libfaketime() -> str:
    """libfaketime's preload library. Not the ``faketime`` wrapper: it forks, and
    stopping it would leave the agent running."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        pytest.fail("libfaketime is missing: install the Debian package 'faketime'")
    return found[0]


def _start_faked(
    cluster: Cluster,
    name: str,
    offset: str,
    join: tuple[str, str] = ("", ""),
    reconnect_max: str = "1",
) -> subprocess.Popen[Any]:
    """Start an agent under libfaketime's ``offset`` (joining on its first start)."""
    log = cluster.root / f"agent-{name}.log"
    cluster.logs.append(log)
    data = cluster.root / f"agent-{name}"
    env = cluster.env(LD_PRELOAD=_libfaketime(), FAKETIME=offset, FAKETIME_DONT_FAKE_MONOTONIC="1")
    args = [
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
        pin, token = join
        args += ["--hub", cluster.addr, "--ca-pin", pin]
        env["REMOTELER_JOIN_TOKEN"] = token
    proc = subprocess.Popen(
        args,
        stdout=open(log, "ab"),  # noqa: SIM115 - the child keeps it
        stderr=subprocess.STDOUT,
        env=env,
    )
    cluster.agents[name] = proc
    return proc


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _libfaketime()
    cluster = Cluster(tmp_path_factory.mktemp("clock"), free_port())
    cluster.start_hub()
    try:
        with ThreadPoolExecutor(6) as pool:  # tctl runs in parallel: a few seconds saved
            user = pool.submit(cluster.add_user, "alice", [ME])
            pin = pool.submit(cluster.ca_pin)
            tokens = [pool.submit(cluster.token) for _ in range(len(SKEWED) + 2)]
            user.result()
            pin_value = pin.result()
            joins = [(pin_value, t.result()) for t in tokens]
        # 30 days behind it could not join: it joins with the right clock (a zero
        # offset: the pin and token above, no tctl of its own), then loses its clock.
        _start_faked(cluster, "stale", "+0", joins[-1])
        # Devices without a real-time clock join as they are (the hub's CA is
        # minutes old: OpenSSL alone refuses it 20 minutes behind).
        for (name, offset, _), join in zip(SKEWED, joins[:-2], strict=True):
            _start_faked(cluster, name, offset, join)
        _start_faked(cluster, "future", "+30d", joins[-2])  # OpenSSL accepts the year-long cert
        joined = cluster.root / "agent-stale" / "identity" / "node.json"
        log = cluster.root / "agent-stale.log"
        try:
            wait_for(joined.exists, timeout=60, interval=0.2, what="stale joined")
        except AssertionError as err:  # its log says why (read now, not when asked)
            raise AssertionError(f"{err}; its log: {_tail(log)}") from None
        stop_process(cluster.agents.pop("stale"))
        _start_faked(cluster, "stale", "-30d", reconnect_max="30")  # one error line is enough
        assert cluster.login("alice").returncode == 0
        yield cluster
    finally:
        cluster.stop()


def _nodes(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in cluster.tctl_json("nodes", "ls")}


def _skews_known(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every connecting agent online with its skew at the hub (one tsh per poll)."""

    def known() -> dict[str, dict[str, Any]] | None:
        # tsh ls: the hub's live view (tctl reads the table, written every 5 s)
        nodes = {n["name"]: n for n in json.loads(cluster.tsh("ls", "--format", "json").stdout)}
        names = [name for name, _, _ in SKEWED] + ["future"]
        ready = all(
            n in nodes and nodes[n]["online"] and nodes[n]["clock_skew"] is not None for n in names
        )
        return nodes if ready else None

    return dict(wait_for(known, timeout=60, interval=0.5, what="skews at the hub"))


def _events_by_node(cluster: Cluster, want: set[tuple[str, str]]) -> dict[str, list[Any]]:
    """The hub's audit events per node name, once each (node, type) in ``want`` is there."""
    names = {n["id"]: name for name, n in _nodes(cluster).items()}

    def found() -> dict[str, list[Any]] | None:
        by_node: dict[str, list[Any]] = {}
        for event in cluster.tctl_json("audit", "search", "--since", "1h"):
            by_node.setdefault(names.get(event["node"], event["node"]), []).append(event)
        have = {(node, e["type"]) for node, events in by_node.items() for e in events}
        return by_node if want <= have else None

    return dict(wait_for(found, timeout=30, interval=0.5, what=f"audit events {sorted(want)}"))


def test_skewed_devices_connect_serve_ssh_and_audit_in_hub_time(skewed: Cluster) -> None:
    nodes = _skews_known(skewed)
    for name, _, skew in SKEWED:
        assert abs(nodes[name]["clock_skew"] - skew) <= 30, nodes[name]
        run = skewed.tsh("ssh", f"{ME}@{name}", "echo hello from the device")
        assert run.returncode == 0, run.stderr
        assert run.stdout == "hello from the device\n"

    kinds = ("tunnel.connect", "session.start", "clock.skew")
    by_node = _events_by_node(skewed, {(n, k) for n, _, _ in SKEWED for k in kinds})
    now = time.time()
    for name, _, skew in SKEWED:
        events = by_node[name]
        # every event in hub time, tunnel.connect included (it waits for the first
        # heartbeat answer); the device's own clock is 20 min or a day off
        off = [(e["type"], round(e["time"] - now)) for e in events if abs(e["time"] - now) >= 120]
        assert not off, (name, off)
        (report, *_) = [e for e in events if e["type"] == "clock.skew"]
        assert abs(report["fields"]["skew"] - skew) <= 30 and report["fields"]["corrected"]
        where = "behind" if skew < 0 else "ahead of"
        assert (
            f"this device's clock is {'20 min' if skew < 0 else '24 h'} {where} the hub's"
            in (report["fields"]["message"])
        )


def test_skew_shown_by_tctl_and_tsh(skewed: Cluster) -> None:
    _skews_known(skewed)

    def rows() -> dict[str, str] | None:  # the table is written every 5 s: wait for it
        table = skewed.tctl("nodes", "ls").stdout.splitlines()
        assert "Clock" in table[0]
        got = {line.split()[0]: line for line in table[1:] if line.strip()}
        shown = [("late", "-20 min"), ("ahead", "+24 h"), ("future", "+30 days")]
        return got if all(text in got.get(name, "") for name, text in shown) else None

    wait_for(rows, timeout=30, interval=0.5, what="the Clock column of tctl nodes ls")
    listed = skewed.tsh("ls", "-v")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:] if line.strip()}
    assert "-20 min" in rows["late"] and "+24 h" in rows["ahead"], listed.stdout


def test_beyond_the_bound_the_error_names_the_skew(skewed: Cluster) -> None:
    log = skewed.root / "agent-stale.log"
    line = "this device's clock is 30 days behind the hub's"
    wait_for(
        lambda: line in log.read_text(errors="replace"), timeout=30, interval=0.3, what="error"
    )
    assert "Traceback" not in log.read_text(errors="replace")
    assert not _nodes(skewed)["stale"]["online"]


def test_a_login_refused_because_of_the_clock_says_so(skewed: Cluster) -> None:
    _skews_known(skewed)
    run = skewed.tsh("ssh", f"{ME}@future", "true")
    assert run.returncode != 0
    assert "this device's clock is 30 days ahead of the hub's" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    by_node = _events_by_node(skewed, {("future", "auth.failed")})
    reasons = [e["fields"]["reason"] for e in by_node["future"] if e["type"] == "auth.failed"]
    assert any("30 days ahead" in reason for reason in reasons), reasons
