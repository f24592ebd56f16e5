"""Role options with real processes (hub, agent, tsh): ``max_sessions`` refuses the
next ``tsh ssh`` / ``tsh scp`` with one line and exit 255, and ``disconnect_expired_cert``
ends a running ``tsh ssh`` when a short certificate expires."""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path

from helpers import BIN, Cluster, stop_process, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name
REFUSAL = "tsh: too many open sessions for alice (1, role one); close one or ask an admin"

ROLE = f"""
kind = "role"
name = "one"
max_sessions = 1
[allow]
logins = ["{ME}"]
node_labels = {{ "*" = "*" }}
"""


def _tsh(cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "tsh"), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cluster.env(),
    )


def test_max_sessions_then_disconnect_at_expiry(cluster: Cluster, tmp_path: Path) -> None:
    """One cluster for both options; real processes are the slow part, so what can
    run at once does (the agent joins while the role and user are made; the two
    refused commands run together)."""
    cluster.start_agent("dev1", "env=lab", None)
    role = tmp_path / "one.toml"
    role.write_text(ROLE)
    cluster.tctl("create", "-f", str(role))
    cluster.add_user("alice", [ME], roles="one")
    wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
    done = cluster.login("alice")
    assert done.returncode == 0, done.stderr

    # max_sessions = 1: the second tsh ssh and a tsh scp are refused with one line
    out = tmp_path / "out"
    with open(out, "wb") as stdout:
        live = subprocess.Popen(
            [str(BIN / "tsh"), "ssh", f"{ME}@dev1", "echo started; sleep 60"],
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            env=cluster.env(),
        )
    try:
        wait_for(lambda: b"started" in out.read_bytes(), timeout=30, what="session running")
        local = tmp_path / "f"
        local.write_text("x")
        refused = [
            _tsh(cluster, "ssh", f"{ME}@dev1", "true"),
            _tsh(cluster, "scp", str(local), f"{ME}@dev1:{tmp_path / 'g'}"),
        ]
        for proc in refused:
            _, err = proc.communicate(timeout=60)
            assert (proc.returncode, err.strip()) == (255, REFUSAL), proc.args
    finally:
        stop_process(live)

    # disconnect_expired_cert (default under 1 h): the agent ends the session at
    # expiry. This session also shows the hub gave the first one's slot back when
    # its tsh went (else it would be refused with REFUSAL).
    done = cluster.login("alice", "--ttl", "8s", offset_steps=1)
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    ran = cluster.tsh("ssh", f"{ME}@dev1", "sleep 30", timeout=40)
    assert time.monotonic() - started < 20
    assert ran.returncode == 255, ran.stderr
    assert "remoteler: your certificate expired at " in ran.stderr
    assert "Traceback" not in ran.stderr
    ends = cluster.tctl_json("audit", "search", "--type", "session.end")
    reasons = [e["fields"].get("reason") for e in ends]
    assert reasons.count("certificate expired") == 1, reasons
