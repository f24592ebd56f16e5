"""CA rotation end to end: real hub, real agent, real tsh (docs/rotation.md).

Phases are moved by hand (``--manual``) so the tests wait only for the fleet
to take each update, never for a grace period, except the one auto-mode test.
"""

from __future__ import annotations

import asyncio
import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from helpers import Cluster, free_port, wait_for

from edge_agent.identity import NodeIdentity
from remoteler.ca import private_key_to_openssh
from remoteler.errors import RemotelerError
from remoteler.hubconn import open_ws
from remoteler.identity import read_identity_file
from remoteler.protocol import TUNNEL_ALPN
from remoteler.tlsutil import client_context

ME = pwd.getpwuid(os.geteuid()).pw_name
ROTATED = "run 'tsh login' again"


def rotate(cluster: Cluster, kind: str, phase: str) -> None:
    cluster.tctl("auth", "rotate", "--type", kind, "--manual", "--phase", phase)


def wait_updated(cluster: Cluster, nodes: int = 1) -> None:
    wait_for(
        lambda: cluster.tctl_json("status")["nodes_updated"] == nodes,
        timeout=30,
        interval=0.3,
        what="the agents to take the rotation update",
    )


def ssh(cluster: Cluster, node: str = "dev1", *extra: str) -> Any:
    return cluster.tsh(*extra, "ssh", f"{ME}@{node}", "echo", "ok")


def ssh_ok(cluster: Cluster, node: str = "dev1") -> bool:
    result = ssh(cluster, node)
    return result.returncode == 0 and result.stdout == "ok\n"


async def _local_ssh(port: int, identity: Path) -> str:
    """Log in to the agent's local listener (no hub) with an identity file."""
    import asyncssh

    ident = read_identity_file(identity)
    key = asyncssh.import_private_key(private_key_to_openssh(ident.key))
    cert = asyncssh.import_certificate(ident.ssh_cert)
    try:
        conn = await asyncssh.connect(
            "127.0.0.1",
            port,
            username=ME,
            client_keys=[(key, cert)],
            known_hosts=None,
            agent_path=None,
            config=None,
        )
    except asyncssh.PermissionDenied:
        return "refused"
    async with conn:
        return str((await conn.run("echo ok", check=False)).stdout)


def local_ssh(port: int, identity: Path) -> str:
    return asyncio.run(_local_ssh(port, identity))


async def _dial_tunnel(cluster: Cluster, ident: NodeIdentity, ca_pem: bytes) -> None:
    ctx = client_context(ca_pem, ident.tls_cert, ident.key_pem, [TUNNEL_ALPN])
    ws = await open_ws(cluster.addr, "/v1/tunnel", ctx, subprotocol="remoteler.tunnel.v1")
    await ws.close()


def relogin(cluster: Cluster) -> None:
    """A second login: the next one-time code (a code is never accepted twice)."""
    result = cluster.login("alice", offset_steps=1)
    assert result.returncode == 0, result.stderr


def start(cluster: Cluster, name: str = "dev1", *extra: str) -> Any:
    cluster.add_user("alice", [ME])
    agent = cluster.start_agent(name, "env=lab", None, *extra)
    wait_for(lambda: cluster.node_online(name), what=f"{name} online")
    assert cluster.login("alice").returncode == 0
    assert ssh_ok(cluster, name)
    return agent


def test_host_ca_rotation_with_a_live_agent(cluster: Cluster, tmp_path: Path) -> None:
    agent = start(cluster)
    old_pin = cluster.ca_pin()
    old_node = NodeIdentity.load(cluster.root / "agent-dev1")
    for phase in ("init", "update_clients"):
        rotate(cluster, "host", phase)
        wait_updated(cluster)
        assert ssh_ok(cluster), phase
    rotate(cluster, "host", "update_servers")
    wait_updated(cluster)
    new_pin = cluster.ca_pin()
    assert new_pin != old_pin
    # tsh trusts only the CA it logged in with; the hub now serves from the new one.
    stale = ssh(cluster)
    assert stale.returncode == 255 and ROTATED in stale.stderr, stale.stderr
    assert stale.stderr.count("\n") == 1
    relogin(cluster)
    assert ssh_ok(cluster)
    rotate(cluster, "host", "standby")
    wait_updated(cluster)
    status = cluster.tctl_json("status")
    assert status["rotation"]["host"]["trusted_pins"] == [new_pin]
    assert status["rotation"]["host"]["last"] == "completed"
    # The agent's tunnel from its old certificate was closed; it redials with the new one.
    wait_for(lambda: ssh_ok(cluster), timeout=30, interval=0.5, what="ssh after the rotation")
    assert agent.poll() is None, "the agent was never restarted"
    new_node = NodeIdentity.load(cluster.root / "agent-dev1")
    assert new_node.tls_cert != old_node.tls_cert and new_node.ssh_cert != old_node.ssh_cert
    with pytest.raises(RemotelerError):  # the old node certificate is refused by the hub
        asyncio.run(_dial_tunnel(cluster, old_node, new_node.host_ca_pem))
    with pytest.raises(RemotelerError):  # and the old CA no longer matches what it serves
        asyncio.run(_dial_tunnel(cluster, new_node, old_node.host_ca_pem))
    events = cluster.tctl_json("audit", "search", "--type", "rotation.phase")
    assert [e["fields"]["phase"] for e in events] == [
        "init",
        "update_clients",
        "update_servers",
        "standby",
    ]
    assert cluster.tctl_json("audit", "search", "--type", "cert.create", "--node", "dev1")


def test_user_ca_rotation_with_a_live_agent(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    agent = start(cluster, "dev1", "--local-listen", f"127.0.0.1:{port}")
    old = tmp_path / "old"
    cluster.tctl("auth", "sign", "--user", "alice", "--ttl", "1h", "-o", str(old))
    assert local_ssh(port, old) == "ok\n"
    rotate(cluster, "user", "init")
    wait_updated(cluster)
    rotate(cluster, "user", "update_clients")
    wait_updated(cluster)
    new = tmp_path / "new"
    cluster.tctl("auth", "sign", "--user", "alice", "--ttl", "1h", "-o", str(new))
    # Both user CAs are trusted by the device and the hub meanwhile.
    assert local_ssh(port, old) == "ok\n" and local_ssh(port, new) == "ok\n"
    assert ssh_ok(cluster)
    for phase in ("update_servers", "standby"):
        rotate(cluster, "user", phase)
        wait_updated(cluster)
    # Old user certificates are refused everywhere: at the device (no hub involved) ...
    assert local_ssh(port, old) == "refused"
    assert local_ssh(port, new) == "ok\n"
    # ... and at the hub, where tsh says what to do.
    stale = ssh(cluster)
    assert stale.returncode == 255 and ROTATED in stale.stderr, stale.stderr
    relogin(cluster)
    assert ssh_ok(cluster)
    assert agent.poll() is None, "the agent was never restarted"


def test_rollback_keeps_the_old_ca(cluster: Cluster) -> None:
    agent = start(cluster)
    pin = cluster.ca_pin()
    for phase in ("init", "update_clients", "update_servers", "rollback", "standby"):
        rotate(cluster, "host", phase)
        wait_updated(cluster)
    status = cluster.tctl_json("status")
    assert status["ca_pin"] == pin and status["rotation"]["host"]["last"] == "rolled back"
    assert status["rotation"]["host"]["trusted_pins"] == [pin]
    # the login from before the rotation works again: everything is back on the old CA
    wait_for(lambda: ssh_ok(cluster), timeout=30, interval=0.5, what="ssh after the rollback")
    assert agent.poll() is None
    refused = cluster.tctl(
        "auth", "rotate", "--type", "host", "--manual", "--phase", "standby", check=False
    )
    assert refused.returncode == 2 and "next can be init" in refused.stderr


def test_offline_agent_rejoins_after_a_rotation(cluster: Cluster) -> None:
    agent = start(cluster)
    agent.terminate()
    agent.wait(timeout=10)
    for phase in ("init", "update_clients", "update_servers", "standby"):
        rotate(cluster, "host", phase)
    assert cluster.tctl_json("status")["nodes_updated"] == 0
    log = cluster.root / "agent-dev1.log"
    mark = log.stat().st_size
    agent = cluster.start_agent("dev1", "env=lab")
    wait_for(
        lambda: "rotated while this node was offline" in log.read_text()[mark:],
        what="the agent to explain why it cannot connect",
    )
    assert "tctl tokens add" in log.read_text()[mark:]
    agent.terminate()
    agent.wait(timeout=10)
    # The documented way back: remove the node, a new token, start with it and the new pin.
    cluster.tctl("nodes", "rm", "dev1")
    pin = cluster.ca_pin()
    token = cluster.token()
    cluster.start_agent(
        "dev1", "env=lab", None, "--hub", cluster.addr, "--token", token, "--ca-pin", pin
    )
    wait_for(lambda: cluster.node_online("dev1"), timeout=30, what="dev1 back online")
    relogin(cluster)
    assert ssh_ok(cluster)


def test_auto_rotation_walks_every_phase(cluster: Cluster) -> None:
    pin = cluster.tctl_json("status")["user_ca_pin"]
    out = cluster.tctl("auth", "rotate", "--type", "user", "--grace-period", "3s").stdout
    assert "Runs by itself" in out

    def done() -> bool:
        rot = cluster.tctl_json("status")["rotation"]["user"]
        return bool(rot["phase"] == "standby" and rot["last"] == "completed")

    wait_for(done, timeout=30, interval=0.5, what="the auto rotation to finish")
    assert cluster.tctl_json("status")["user_ca_pin"] != pin
    phases = [
        e["fields"]["phase"]
        for e in cluster.tctl_json("audit", "search", "--type", "rotation.phase")
    ]
    assert phases == ["init", "update_clients", "update_servers", "standby"]
