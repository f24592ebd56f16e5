"""Every tctl command's JSON keys, pinned: tctl became a client of the hub's RPC and its
output must not change (docs/tctl.md: keys are only ever added)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import PASSWORD, Cluster, free_port

from hub.datadir import DataDir
from hub.storage.api import Node, Rollout
from hub.storage.sqlite import open_sqlite
from remoteler.audit.events import EventType, make_event
from tctl import cli as tctl

USER = {"name", "roles", "logins", "connector", "expires"}
ROLE = {
    "name",
    "logins",
    "node_labels",
    "max_session_ttl",
    "deny_logins",
    "deny_node_labels",
    "permissions",
    "max_sessions",
    "disconnect_expired_cert",
}
NODE = {
    "id",
    "name",
    "labels",
    "online",
    "last_seen",
    "version",
    "audit_pending",
    "audit_oldest",
    "recording",
    "clock_skew",
    "caps",
    "hubs",
}
LOCK = {"id", "kind", "target", "message", "created", "expires"}
EVENT = {"id", "type", "time", "node", "user", "login", "session", "seq", "fields"}
ROLLOUT = {
    "id",
    "name",
    "version",
    "state",
    "reason",
    "created",
    "finished",
    "nodes_selector",
    "canary_percent",
    "canary_timeout",
    "max_parallel",
    "rate",
    "sha256",
    "size",
}
ROLLOUT_NODE = {
    "node",
    "node_id",
    "canary",
    "state",
    "detail",
    "progress",
    "resumed_from",
    "attempts",
    "updated",
}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A hub with a node and a roll-out stored before it started."""
    cluster = Cluster(tmp_path_factory.mktemp("json"), free_port())
    DataDir(cluster.data).init("test")

    async def fill() -> None:
        storage = await open_sqlite(cluster.data)
        try:
            await storage.nodes.add(
                Node("id-1", "gw-1", {"board": "rpi4"}, version="0.1.0", caps=("resume",))
            )
            rollout = Rollout(
                "fw-1", 0.0, "gw-fw", "1.0", "0" * 64, "0" * 64, 1, {}, None, 1, None, False,
                "stopped",
            )  # fmt: skip
            await storage.firmware.create(rollout, [("id-1", "gw-1", False)])
            # a fleet has a trail
            await storage.audit.record(make_event(EventType.USER_LOGIN, node="hub", user="amy"))
        finally:
            await storage.close()

    asyncio.run(fill())
    cluster.start_hub()
    try:
        yield cluster.data
    finally:
        cluster.stop()


def _json(data: Path, capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = "") -> Any:
    import io
    import sys

    sys.stdin = io.StringIO(stdin)
    try:
        code = tctl.main(["--data-dir", str(data), *argv, "--format", "json"])
    finally:
        sys.stdin = sys.__stdin__
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


def test_json_keys_of_every_command(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def run(*argv: str, stdin: str = "") -> Any:
        return _json(data, capsys, *argv, stdin=stdin)

    assert set(run("users", "add", "amy", "--logins", "pi")) == {
        "user",
        "roles",
        "logins",
        "invite",
        "invite_expires",
        "ca_pin",
    }
    with_pw = run("users", "add", "bo", "--password-stdin", stdin=PASSWORD + "\n")
    assert set(with_pw) == {"user", "roles", "logins", "totp_uri"}
    assert all(set(u) == USER for u in run("users", "ls"))
    assert set(run("tokens", "add", "--ttl", "5m")) == {
        "token",
        "token_id",
        "type",
        "expires",
        "labels",
        "ca_pin",
        "hub",
    }
    (token,) = run("tokens", "ls")
    assert set(token) == {"token_id", "type", "labels", "expires", "state"}
    (node,) = run("nodes", "ls")
    assert set(node) == NODE
    assert node["caps"] == ["resume"]  # as stored: every hub of a cluster reads the same
    roles = run("get", "roles")
    assert {r["name"] for r in roles} >= {"access", "editor"}
    assert all(set(r) == ROLE for r in roles)
    assert run("get", "connectors") == {"connectors": [], "default": "local"}
    assert set(run("lock", "--user", "amy", "--ttl", "1h")) == LOCK
    assert all(set(lock) == LOCK for lock in run("locks", "ls"))
    status = run("status")
    assert set(status) == {
        "cluster",
        "hub",
        "nodes",
        "nodes_online",
        "rotation",
        "nodes_updated",
        "ca_pin",
        "user_ca_pin",
        "hub_id",
        "hubs",
        "agent_connections",
        "agent_connections_set",
    }
    assert set(status["rotation"]) == {"user", "host"}
    (hub,) = status["hubs"]  # one hub: this one
    assert hub["id"] == status["hub_id"] and status["agent_connections"] == 1
    assert set(hub) == {"id", "addr", "peer_addr", "agents", "lease_age", "version", "started"}
    set_ = run("cluster", "set", "--agent-connections", "2")
    assert set_ == {"agent_connection_count": 2}
    assert set(status["rotation"]["user"]) == {"phase", "mode", "last", "trusted_pins"}
    events = run("audit", "search")
    assert events and all(set(e) == EVENT for e in events)
    assert run("firmware", "trust", "ls") == []
    (listed,) = run("firmware", "status")
    assert set(listed) == ROLLOUT | {"node_states"}
    one = run("firmware", "status", "fw-1")
    assert set(one) == ROLLOUT | {"nodes"} and set(one["nodes"][0]) == ROLLOUT_NODE
    rotated = run("auth", "rotate", "--type", "host", "--manual", "--phase", "init")
    assert set(rotated) == {"type", "phase", "previous", "mode", "ca_pin", "new_ca_pin"}
    run("auth", "rotate", "--type", "host", "--manual", "--phase", "rollback")


def test_audit_export_lines(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tctl.main(["--data-dir", str(data), "audit", "export"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(set(json.loads(line)) == EVENT for line in lines)
