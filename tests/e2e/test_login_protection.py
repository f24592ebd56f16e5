"""Repeated failed ``tsh login``s lock the account (across a hub restart, the same for
names that do not exist) and then the source address; ``tctl users unlock`` lifts it."""

from __future__ import annotations

import signal
import subprocess

from helpers import PASSWORD, Cluster, current_totp

ACCOUNT_LOCKED = "too many failed logins for this account"
ADDRESS_LIMITED = "from your address"


def _login(cluster: Cluster, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return cluster.tsh(
        "login", "--proxy", cluster.addr, "--user", user, "--ca-pin", cluster.ca_pin(),
        "--otp", current_totp(), input=password + "\n",
    )  # fmt: skip


def test_lockout_per_user_and_per_address(cluster: Cluster) -> None:
    cluster.add_user("alice", ["root"])
    for _ in range(5):
        bad = _login(cluster, "alice", "not the password")
        assert bad.returncode != 0 and "login failed" in bad.stderr, bad.stderr
    refused = _login(cluster, "alice", PASSWORD)
    assert refused.returncode != 0 and ACCOUNT_LOCKED in refused.stderr, refused.stderr
    assert "try again in" in refused.stderr and refused.stderr.strip().count("\n") == 0

    cluster.kill_hub(signal.SIGTERM)
    cluster.start_hub()
    still = _login(cluster, "alice", PASSWORD)
    assert still.returncode != 0 and ACCOUNT_LOCKED in still.stderr, "a restart keeps it"
    unlocked = cluster.tctl("users", "unlock", "alice")
    assert "lockout lifted" in unlocked.stdout
    assert _login(cluster, "alice", PASSWORD).returncode == 0

    # a name that does not exist locks the same way, then the address runs out of attempts
    answers = [_login(cluster, "nobody", "not the password").stderr for _ in range(12)]
    assert all("login failed" in a for a in answers[:5]), answers
    assert ACCOUNT_LOCKED in answers[5], answers
    assert any(ADDRESS_LIMITED in a for a in answers[6:]), answers

    events = cluster.tctl_json("audit", "search", "--type", "user.login")
    reasons = {e["fields"].get("reason") for e in events if e["fields"].get("success") is False}
    assert {"wrong password", "unknown user", "user locked out"} <= reasons, reasons
    assert all(e["fields"].get("remote_addr") == "127.0.0.1" for e in events)
