"""Firmware roll-outs with real processes: a hub, three agents, real bundles and hooks.

One agent's link goes through a fault proxy that is reset mid-transfer (the hub caps
the rate so the cut lands mid-way): the transfer resumes from the staged offset.
One agent's install hook fails: that node rolls back, the others install. In a second
roll-out the canary's health check fails: the roll-out stops and no other node gets
a byte of the bundle. In a third, the hook asks for a restart: the agent stops, and
the next start health-checks the new slot before the hub hears "installed". A
downgrade pushed without --force is refused by the device, and the hub's audit
trail has the firmware.failed with the bundle's version.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from fwkit import signed_bundle
from helpers import Cluster, free_port, wait_for

from firmware_tools.keys import write_key_pair

LABELS = "board=rpi4,fleet=test"
BUNDLE_PAYLOAD = 300 * 1024
HOOK = """#!/bin/sh
if [ -e "$REMOTELER_DATA_DIR/fail-install" ]; then
    echo "flash write failed on $REMOTELER_NODE" >&2
    exit 4
fi
echo "$REMOTELER_FW_VERSION" > "$REMOTELER_FW_SLOT/hook-ran"
if [ -e "$REMOTELER_DATA_DIR/restart-after-install" ]; then
    touch "$REMOTELER_FW_RESTART_FILE"
fi
"""
HEALTH = 'test ! -e "$REMOTELER_DATA_DIR/unhealthy"'


def _bundle(cluster: Cluster, version: str) -> Path:
    return signed_bundle(cluster.root, cluster.root / "fw.key", version, HOOK, BUNDLE_PAYLOAD)


def _agent_dir(cluster: Cluster, name: str) -> Path:
    return cluster.root / f"agent-{name}"


def _current_version(cluster: Cluster, name: str) -> str | None:
    hook_ran = _agent_dir(cluster, name) / "firmware" / "current" / "hook-ran"
    return hook_ran.read_text().strip() if hook_ran.exists() else None


def _start(cluster: Cluster, name: str, *extra: str, hub: str | None = None) -> None:
    extra = ("--firmware-health-check", HEALTH, *extra)
    key = cluster.root / "fw.key.pub"
    labels = f"{LABELS},dev={name}"
    cluster.start_agent(name, labels, None, "--firmware-key", str(key), *extra, hub=hub)


def _status(cluster: Cluster, rollout: str) -> dict[str, Any]:
    data: dict[str, Any] = cluster.tctl_json("firmware", "status", rollout)
    return data


def _events(cluster: Cluster, kind: str, node: str | None = None) -> list[dict[str, Any]]:
    where = ["--node", node] if node else []
    found: list[dict[str, Any]] = cluster.tctl_json("audit", "search", "--type", kind, *where)
    return found


def _by_node(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["node"]: n for n in status["nodes"]}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, FaultProxy]]:
    """A hub and three agents (dev-b through a fault proxy), shared by this module's
    roll-outs: joining costs more than a roll-out."""
    cluster = Cluster(tmp_path_factory.mktemp("firmware"), free_port())
    proxy = FaultProxy("127.0.0.1", cluster.hub_port).start()
    try:
        cluster.start_hub()
        key = cluster.root / "fw.key"
        write_key_pair(key)
        cluster.tctl("firmware", "trust", f"{key}.pub")
        pin = cluster.ca_pin()
        cluster.ca_pin = lambda: pin  # type: ignore[method-assign]  # one tctl call, not three
        for name in ("dev-a", "dev-b", "dev-c"):
            _start(cluster, name, hub=proxy.addr if name == "dev-b" else None)
        for name in ("dev-a", "dev-b", "dev-c"):  # the hub routes to them from now on
            log = cluster.root / f"agent-{name}.log"
            wait_for(lambda p=log: b"tunnel up" in p.read_bytes(), what=f"{name}'s tunnel")
        yield cluster, proxy
    finally:
        proxy.stop()
        cluster.stop()


def test_rollout_resumes_a_cut_transfer_and_rolls_back_a_failed_hook(
    fleet: tuple[Cluster, FaultProxy],
) -> None:
    cluster, proxy = fleet
    bundle = _bundle(cluster, "1.0.0")
    fail = _agent_dir(cluster, "dev-c") / "fail-install"
    fail.write_text("")
    try:
        before = proxy.stats.bytes_down
        out = cluster.tctl_json(
            "firmware", "push", str(bundle), "--nodes", "fleet=test", "--rate", "100KiB/s"
        )
        rollout = out["id"]
        assert sorted(out["nodes"]) == ["dev-a", "dev-b", "dev-c"] and out["canaries"] == []
        # Cut dev-b's link once a third of the bundle went through it.
        wait_for(
            lambda: proxy.stats.bytes_down - before > 100 * 1024,
            timeout=30,
            what="transfer to dev-b under way",
        )
        assert proxy.reset() >= 1
        wait_for(
            lambda: _status(cluster, rollout)["state"] == "done",
            timeout=60,
            interval=0.5,
            what="roll-out done",
        )
    finally:
        fail.unlink()
    nodes = _by_node(_status(cluster, rollout))
    assert nodes["dev-a"]["state"] == "installed", nodes
    assert nodes["dev-b"]["state"] == "installed", nodes
    assert nodes["dev-b"]["resumed_from"] > 0, nodes  # continued, not restarted
    assert nodes["dev-b"]["attempts"] >= 2
    assert nodes["dev-a"]["resumed_from"] == 0
    assert nodes["dev-c"]["state"] == "rolled-back", nodes
    assert "install hook exited 4" in nodes["dev-c"]["detail"]
    assert "flash write failed on dev-c" in nodes["dev-c"]["detail"]
    for name in ("dev-a", "dev-b"):
        current = _agent_dir(cluster, name) / "firmware" / "current"
        assert (current / "hook-ran").read_text().strip() == "1.0.0"
        assert (current / "rootfs.img").stat().st_size == BUNDLE_PAYLOAD
    assert not (_agent_dir(cluster, "dev-c") / "firmware" / "current").exists()
    # The devices' audit trail says the same, dev-b's transfer with its resume offset.
    transfers = wait_for(
        lambda: _events(cluster, "firmware.transfer", "dev-b"), what="dev-b's transfer event"
    )
    assert transfers[-1]["fields"]["resumed_from"] > 0
    assert transfers[-1]["fields"]["rollout"] == rollout
    rollbacks = wait_for(
        lambda: _events(cluster, "firmware.rollback"), what="dev-c's firmware.rollback event"
    )
    assert len(rollbacks) == 1 and rollbacks == _events(cluster, "firmware.rollback", "dev-c")
    done = cluster.tctl_json("audit", "search", "--type", "firmware.rollout.done")
    assert [e["fields"]["rollout"] for e in done] == [rollout]


def test_a_canary_failing_its_health_check_stops_the_rollout(
    fleet: tuple[Cluster, FaultProxy],
) -> None:
    cluster, _proxy = fleet
    bundle = _bundle(cluster, "2.0.0")
    (_agent_dir(cluster, "dev-a") / "unhealthy").write_text("")  # dev-a sorts first: canary
    before = {name: _current_version(cluster, name) for name in ("dev-a", "dev-b", "dev-c")}
    out = cluster.tctl_json(
        "firmware", "push", str(bundle), "--nodes", "board=rpi4", "--canary", "10%"
    )
    assert out["canaries"] == ["dev-a"]
    rollout = out["id"]
    status = wait_for(
        lambda: (s := _status(cluster, rollout))["state"] != "running" and s,
        timeout=30,
        interval=0.5,
        what="roll-out to end",
    )
    assert status["state"] == "stopped", status
    assert "canary dev-a rolled-back" in status["reason"]
    assert "health check exited 1" in status["reason"]
    nodes = _by_node(status)
    assert nodes["dev-a"]["state"] == "rolled-back"
    for name in ("dev-b", "dev-c"):  # never offered; nothing more happens to them
        assert nodes[name]["state"] == "stopped" and nodes[name]["attempts"] == 0, nodes
        assert not (_agent_dir(cluster, name) / "firmware" / "incoming" / "bundle.part").exists()
    # Every device runs what it ran before: dev-a went back to its previous slot.
    assert {name: _current_version(cluster, name) for name in before} == before
    stops = cluster.tctl_json("audit", "search", "--type", "firmware.rollout.stop")
    assert [e["fields"]["rollout"] for e in stops] == [rollout]
    text = cluster.tctl("firmware", "status").stdout
    assert rollout in text and "stopped" in text


def test_an_install_that_asks_for_a_restart_is_health_checked_after_it(
    fleet: tuple[Cluster, FaultProxy],
) -> None:
    cluster, proxy = fleet
    bundle = _bundle(cluster, "3.0.0")
    (_agent_dir(cluster, "dev-b") / "restart-after-install").write_text("")
    old = cluster.agents["dev-b"]
    out = cluster.tctl_json("firmware", "push", str(bundle), "--nodes", "dev=dev-b")
    assert out["nodes"] == ["dev-b"]
    # The agent stops itself once the hook asked for a restart (a supervisor would
    # start it again); the new slot is active but not yet confirmed.
    assert old.wait(timeout=30) == 0
    assert _current_version(cluster, "dev-b") == "3.0.0"
    assert _status(cluster, out["id"])["nodes"][0]["state"] == "restarting"
    _start(cluster, "dev-b", hub=proxy.addr)  # the health check runs before it dials
    status = wait_for(
        lambda: (s := _status(cluster, out["id"]))["state"] == "done" and s,
        timeout=30,
        interval=0.5,
        what="roll-out done after the restart",
    )
    node = status["nodes"][0]
    assert node["state"] == "installed" and node["attempts"] >= 1, node
    assert _current_version(cluster, "dev-b") == "3.0.0"


def test_a_refused_downgrade_reaches_the_hub_audit_with_its_version(
    fleet: tuple[Cluster, FaultProxy],
) -> None:
    # dev-b runs 3.0.0 since the test before: 1.5.0 without --force is refused by
    # the device, and the hub's audit trail has the refusal with the version.
    cluster, _proxy = fleet
    bundle = _bundle(cluster, "1.5.0")
    out = cluster.tctl_json("firmware", "push", str(bundle), "--nodes", "dev=dev-b")
    status = wait_for(
        lambda: (s := _status(cluster, out["id"]))["state"] == "done" and s,
        timeout=30,
        interval=0.5,
        what="roll-out done",
    )
    assert status["nodes"][0]["state"] == "failed"
    failed = wait_for(
        lambda: [
            e for e in _events(cluster, "firmware.failed", "dev-b")
            if e["fields"].get("rollout") == out["id"]
        ],
        what="firmware.failed at the hub",
    )  # fmt: skip
    assert [e["fields"]["version"] for e in failed] == ["1.5.0"]
    reason = failed[0]["fields"]["reason"]
    assert "tctl firmware push --force" in reason and "--firmware-allow-downgrade" in reason
    assert _current_version(cluster, "dev-b") == "3.0.0"
