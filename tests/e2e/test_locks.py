"""Locks with real processes: ``tctl lock`` ends a live ``tsh ssh`` with its message,
refuses new sessions and logins at the hub, reaches the device, expires, and is lifted."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from pathlib import Path
from typing import Any

from helpers import BIN, Cluster, free_port, stop_process, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name


def _ready(cluster: Cluster, *agent_args: str) -> None:
    cluster.add_user("alice", [ME])
    cluster.start_agent("dev1", "env=lab", None, *agent_args)
    wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
    assert cluster.login("alice").returncode == 0


def _ssh(cluster: Cluster, command: str = "echo ok") -> subprocess.CompletedProcess[str]:
    return cluster.tsh("ssh", f"{ME}@dev1", command, timeout=60)


def _lock(cluster: Cluster, *args: str) -> str:
    out = cluster.tctl_json("lock", *args)
    return str(out["id"])


def _events(cluster: Cluster, kind: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = cluster.tctl_json("audit", "search", "--type", kind)
    return found


def test_lock_ends_a_live_session_with_its_message_and_unlock_lifts_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    _ready(cluster)
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        live = subprocess.Popen(
            [str(BIN / "tsh"), "ssh", f"{ME}@dev1", "echo started; sleep 120"],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=cluster.env(),
        )
    try:
        wait_for(lambda: b"started" in out.read_bytes(), timeout=30, what="session running")
        lock_id = _lock(cluster, "--user", "alice", "--message", "incident 42: call the SOC")
        live.wait(timeout=30)
    finally:
        stop_process(live)
    shown = err.read_text()
    assert live.returncode != 0
    assert "incident 42: call the SOC" in shown, shown
    assert "Traceback" not in shown

    refused = _ssh(cluster)
    assert refused.returncode != 0 and "incident 42" in refused.stderr, refused.stderr
    relogin = cluster.login("alice", offset_steps=1)
    assert relogin.returncode != 0 and "locked" in relogin.stderr, relogin.stderr

    (listed,) = cluster.tctl_json("locks", "ls")
    assert listed["id"] == lock_id and listed["kind"] == "user" and listed["target"] == "alice"
    cluster.tctl("unlock", lock_id)
    assert cluster.tctl_json("locks", "ls") == []
    wait_for(lambda: _ssh(cluster).returncode == 0, timeout=30, interval=0.5, what="unlocked")

    created, deleted = _events(cluster, "lock.created"), _events(cluster, "lock.deleted")
    assert [e["fields"]["lock_id"] for e in created] == [lock_id]
    assert [e["fields"]["lock_id"] for e in deleted] == [lock_id]
    agent_log = (cluster.root / "agent-dev1.log").read_text()
    assert "ending a locked session" in agent_log, "the device ended the session itself"


def test_node_and_login_locks_and_expiry(cluster: Cluster) -> None:
    _ready(cluster)
    # Long enough that a loaded CI machine still connects before it expires.
    node_lock = _lock(cluster, "--node", "dev1", "--ttl", "20s", "--message", "maintenance")
    refused = _ssh(cluster)
    assert refused.returncode != 0
    assert "node 'dev1' is locked by an administrator: maintenance" in refused.stderr
    # the lock expires by itself
    wait_for(lambda: _ssh(cluster).returncode == 0, timeout=60, interval=0.5, what="expiry")
    assert all(lock["id"] != node_lock for lock in cluster.tctl_json("locks", "ls"))

    login_lock = _lock(cluster, "--login", ME)
    refused = _ssh(cluster)
    assert refused.returncode != 0 and f"login '{ME}' is locked" in refused.stderr
    cluster.tctl("unlock", login_lock)
    # the hub lets it through at once; the device learns of the unlock a moment later
    wait_for(lambda: _ssh(cluster).returncode == 0, timeout=30, interval=0.5, what="unlocked")

    bad = cluster.tctl("unlock", "nosuchlock", check=False)
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1
    bad = cluster.tctl("lock", "--node", "ghost", check=False)
    assert bad.returncode != 0 and "no node 'ghost'" in bad.stderr


def _alias(known_hosts: Path, node: str) -> str:
    """NODE.<cluster>: the exported line trusts the host CA for ``*.<cluster>`` only."""
    return known_hosts.read_text().split()[1].replace("*", node, 1)


def _openssh(ident: Path, known_hosts: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    return subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-i", str(ident), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"HostKeyAlias={_alias(known_hosts, 'dev1')}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10", "-p", str(port), f"{ME}@127.0.0.1", "echo ok",
        ],
        capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=30,
    )  # fmt: skip


def test_device_refuses_a_locked_user_with_the_hub_down(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    cluster.add_user("bob", [ME])
    _ready(cluster, "--local-listen", f"127.0.0.1:{port}")
    idents = {}
    for user in ("alice", "bob"):
        idents[user] = tmp_path / user
        cluster.tctl("auth", "sign", "--user", user, "--ttl", "1h", "-o", str(idents[user]))
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(cluster.tctl("auth", "export", "--type", "host").stdout)
    assert _openssh(idents["alice"], known_hosts, port).returncode == 0

    _lock(cluster, "--user", "alice", "--message", "lost laptop")
    cache = cluster.root / "agent-dev1" / "locks.json"
    wait_for(lambda: cache.exists() and b"alice" in cache.read_bytes(), what="lock on device")
    assert cache.stat().st_mode & 0o077 == 0

    cluster.kill_hub(signal.SIGKILL)
    stop_process(cluster.agents["dev1"])  # and the agent restarts with no hub to ask
    # a clean stop on SIGTERM (not the SIGKILL after 10 s): else the check below
    # for the restart would find the first start's line
    assert "agent stopping" in (cluster.root / "agent-dev1.log").read_text()
    cluster.start_agent("dev1", "env=lab", None, "--local-listen", f"127.0.0.1:{port}")
    wait_for(
        lambda: (
            "local ssh listening"
            in (cluster.root / "agent-dev1.log").read_text().split("agent stopping")[-1]
        ),
        what="agent restarted",
    )
    refused = _openssh(idents["alice"], known_hosts, port)
    assert refused.returncode == 255 and refused.stdout == "", refused.stderr
    allowed = _openssh(idents["bob"], known_hosts, port)
    assert (allowed.returncode, allowed.stdout) == (0, "ok\n"), allowed.stderr
    log = (cluster.root / "agent-dev1.log").read_text()
    assert "user 'alice' is locked by an administrator: lost laptop" in log
