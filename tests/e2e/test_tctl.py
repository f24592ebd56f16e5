"""tctl against a running hub: stable JSON shapes, removals, exports."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import PASSWORD, TOTP_SECRET, Cluster, wait_for


def test_json_shapes_and_removals(cluster: Cluster, tmp_path: Path) -> None:
    status = cluster.tctl_json("status")
    assert set(status) >= {"cluster", "hub", "ca_pin", "user_ca_pin", "nodes", "nodes_online"}
    assert status["hub"] == cluster.addr and status["ca_pin"].startswith("sha256:")

    cluster.add_user("kim", ["pi"])
    assert cluster.tctl_json("users", "ls") == [
        {"name": "kim", "roles": ["access"], "logins": ["pi"], "connector": None, "expires": None}
    ]

    added = cluster.tctl_json("tokens", "add", "--ttl", "5m", "--labels", "site=x")
    assert set(added) >= {"token", "token_id", "type", "expires", "labels", "ca_pin", "hub"}
    listed = cluster.tctl_json("tokens", "ls")
    assert [(t["token_id"], t["state"], t["labels"]) for t in listed] == [
        (added["token_id"], "valid", {"site": "x"})
    ]
    assert added["token"] not in json.dumps(listed), "tokens ls never shows a token"
    cluster.tctl("tokens", "rm", added["token_id"])
    assert cluster.tctl_json("tokens", "ls") == []

    cluster.start_agent(
        "gone", "env=lab", cluster.token("--labels", "site=y"), "--heartbeat-interval", "0.5"
    )
    wait_for(lambda: cluster.node_online("gone"), what="node online")
    (node,) = cluster.tctl_json("nodes", "ls")
    assert node["labels"] == {"env": "lab", "site": "y"}, "token labels are merged in"
    assert set(node) >= {"id", "name", "labels", "online", "last_seen", "version"}

    cluster.tctl("nodes", "rm", "gone")
    wait_for(
        lambda: "this node was removed" in (cluster.root / "agent-gone.log").read_text(),
        what="removed node refused",
    )

    bad = cluster.tctl("users", "rm", "nobody", check=False)
    assert bad.returncode != 0 and bad.stderr.startswith("tctl: ") and bad.stderr.count("\n") == 1


def test_auth_export_lines_are_what_openssh_reads(cluster: Cluster, tmp_path: Path) -> None:
    host = cluster.tctl("auth", "export", "--type", "host").stdout.strip()
    user = cluster.tctl("auth", "export", "--type", "user").stdout.strip()
    cluster_name = cluster.tctl_json("status")["cluster"]
    assert host.startswith(f"@cert-authority *.{cluster_name} ssh-ed25519 ")
    assert user.startswith("ssh-ed25519 ")
    path = tmp_path / "user_ca.pub"
    path.write_text(user + "\n")
    fp = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True)
    assert fp.returncode == 0 and "ED25519" in fp.stdout


def test_no_secret_reaches_a_log(cluster: Cluster) -> None:
    token = cluster.token()
    cluster.add_user("lee", ["root"])
    cluster.start_agent("n1", "", token)
    wait_for(lambda: cluster.node_online("n1"), what="online")
    assert cluster.login("lee").returncode == 0
    cluster.tsh("ssh", "root@n1", "true")
    cluster.tsh("login", "--proxy", cluster.addr, "--user", "lee", "--otp", "1", input="wrong\n")
    logs = cluster.all_logs()
    for secret in (token, PASSWORD, TOTP_SECRET, "BEGIN OPENSSH PRIVATE KEY", "PRIVATE KEY"):
        assert secret not in logs
    assert "user login" in logs and "login failed" in logs, "the events themselves are logged"


def test_token_labels_win_over_what_the_agent_reports(cluster: Cluster) -> None:
    cluster.start_agent("tiered", "tier=silver,env=lab", cluster.token("--labels", "tier=gold"))
    wait_for(lambda: cluster.node_online("tiered"), what="online")
    wait_for(
        lambda: cluster.tctl_json("nodes", "ls")[0]["labels"] == {"tier": "gold", "env": "lab"},
        what="merged labels",
    )
    # a restart with other flags cannot shed the operator's label
    from helpers import stop_process

    stop_process(cluster.agents.pop("tiered"))
    cluster.start_agent("tiered", "tier=bronze", None, "--heartbeat-interval", "0.5")
    wait_for(lambda: cluster.node_online("tiered"), what="online again")
    wait_for(
        lambda: cluster.tctl_json("nodes", "ls")[0]["labels"] == {"tier": "gold"},
        timeout=30,
        what="heartbeat labels flushed",
    )
