"""Repeated failed ``tsh login``s lock the account (across a hub restart, the same for
names that do not exist) and then the source address; ``tctl users unlock`` lifts it."""

from __future__ import annotations

import signal
import subprocess

from helpers import BIN, PASSWORD, Cluster, current_totp

ACCOUNT_LOCKED = "too many failed logins for this account"
ADDRESS_LIMITED = "from your address"


def _login(cluster: Cluster, user: str, password: str) -> subprocess.CompletedProcess[str]:
    return cluster.tsh(
        "login", "--proxy", cluster.addr, "--user", user, "--ca-pin", cluster.ca_pin(),
        "--otp", current_totp(), input=password + "\n",
    )  # fmt: skip


def _spawn_login(cluster: Cluster, user: str, pin: str) -> subprocess.Popen[str]:
    password = cluster.root / "wrong-password"
    password.write_text("not the password\n")
    with open(password) as stdin:
        return subprocess.Popen(
            [str(BIN / "tsh"), "login", "--proxy", cluster.addr, "--user", user,
             "--ca-pin", pin, "--otp", "000000"],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=cluster.env(),
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

    # a name that does not exist locks the same way
    answers = [_login(cluster, "nobody", "not the password").stderr for _ in range(6)]
    assert all("login failed" in a for a in answers[:5]), answers
    assert ACCOUNT_LOCKED in answers[5], answers
    # then the address runs out of attempts: a burst arrives faster than the bucket
    # refills, however slow this machine is
    pin = cluster.ca_pin()
    for _ in range(3):
        burst = [_spawn_login(cluster, f"guess{i}", pin) for i in range(16)]
        errors = [proc.communicate(timeout=120)[1] for proc in burst]
        if any(ADDRESS_LIMITED in e for e in errors):
            break
    else:
        raise AssertionError(f"the address was never rate limited: {errors}")

    events = cluster.tctl_json("audit", "search", "--type", "user.login")
    reasons = {e["fields"].get("reason") for e in events if e["fields"].get("success") is False}
    assert {"wrong password", "unknown user", "user locked out"} <= reasons, reasons
    assert all(e["fields"].get("remote_addr") == "127.0.0.1" for e in events)
