"""A legacy device: a real OpenSSH sshd behind an agent in forward mode, end to end.

One hub; ``legacy-1`` runs ``edge-agent start --ssh-target`` in front of an sshd
from tests/sshdkit.py (TrustedUserCAKeys from ``tctl auth export --type user``,
host certificate from ``tctl auth sign --host``); ``legacy-down`` points at a
port nobody listens on.
"""

from __future__ import annotations

import gc
import json
import os
import pwd
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import Cluster, free_port, wait_for
from require import require_binaries
from sshdkit import LegacySshd, legacy_sshd

ME = pwd.getpwuid(os.geteuid()).pw_name
NODE = "legacy-1"
DOWN = "legacy-down"
STRICT = "legacy-strict"  # its sshd admits only the principal "admins" (AuthorizedPrincipalsFile)
WEAK = "legacy-weak"  # its sshd offers only algorithms Remoteler's clients refuse
WEAK_SSHD = "KexAlgorithms ecdh-sha2-nistp256\nCiphers aes128-ctr\nMACs hmac-sha2-256\n"
#: heartbeats carry the mode: often enough for the test, lenient on a loaded machine
BEATS = ("--heartbeat-interval", "2", "--allowed-misses", "10")


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    """What this module runs: present, or every test fails with a one-line hint."""
    require_binaries("sshd", "ssh", "ssh-keygen")


@dataclass
class Fleet:
    cluster: Cluster
    root: Path
    sshd: LegacySshd
    down_port: int

    def audit(self, type: str, node: str) -> list[dict[str, Any]]:
        out = self.cluster.tctl_json("audit", "search", "--type", type, "--node", node)
        return list(out)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("legacy")
    cluster = Cluster(root, free_port())
    cluster.start_hub()
    try:
        cluster.add_user("alice", [ME])
        cluster.add_user("bob", ["operator"])  # a certificate without our login
        with (
            legacy_sshd(cluster, root, name=NODE) as sshd,
            legacy_sshd(cluster, root, name=STRICT, principals=["admins"]) as strict,
            legacy_sshd(cluster, root, name=WEAK, extra_config=WEAK_SSHD) as weak,
        ):
            down_port = free_port()  # nothing listens there
            targets = {NODE: sshd.target, DOWN: f"127.0.0.1:{down_port}", STRICT: strict.target}
            targets[WEAK] = weak.target
            for name, target in targets.items():
                cluster.start_agent(name, "env=legacy", None, "--ssh-target", target, *BEATS)
            wait_for(lambda: all(cluster.node_online(n) for n in targets), what="nodes online")
            login = cluster.login("alice")
            assert login.returncode == 0, login.stderr
            yield Fleet(cluster, root, sshd, down_port)
    finally:
        cluster.stop()


def test_tsh_ssh_reaches_the_devices_sshd(fleet: Fleet) -> None:
    run = fleet.cluster.tsh("ssh", f"{ME}@{NODE}", "echo hi; exit 3")
    assert (run.stdout, run.returncode) == ("hi\n", 3), run.stderr
    # It was the real sshd that let us in, with the user CA it trusts.
    assert 'Accepted certificate ID "alice"' in fleet.sshd.log_text()
    # The device's audit: start (user, login, session from the hub) and end with bytes.
    start = wait_for(lambda: fleet.audit("ssh.forward.start", NODE), what="ssh.forward.start")
    assert (start[0]["user"], start[0]["login"]) == ("alice", ME)
    assert start[0]["fields"]["target"] == fleet.sshd.target and start[0]["session"]
    end = wait_for(lambda: fleet.audit("ssh.forward.end", NODE), what="ssh.forward.end")
    assert end[0]["session"] == start[0]["session"]
    assert end[0]["fields"]["bytes_in"] > 0 and end[0]["fields"]["bytes_out"] > 0


def test_sshdkit_leaves_no_file_open(fleet: Fleet, tmp_path: Path) -> None:
    """legacy_sshd hands the log to sshd's stderr and closes its own copy (no fd leak)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with legacy_sshd(fleet.cluster, tmp_path, name="leak-check") as sshd:
            gc.collect()
            assert sshd.pid > 0
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not [m for m in unclosed if "sshd.log" in m], unclosed


def test_nodes_list_says_forward_mode(fleet: Fleet) -> None:
    """The agents' heartbeats (every 2 s here) carry the mode to nodes.list."""

    def modes() -> dict[str, str]:
        nodes = json.loads(fleet.cluster.tsh("ls", "--format", "json").stdout)
        return {n["name"]: n["ssh"] for n in nodes}

    want = {NODE: "forward", DOWN: "forward", STRICT: "forward", WEAK: "forward"}
    wait_for(lambda: modes() == want, what=f"modes: {modes()}")
    # the agent keeps the TCP connection to sshd across a break: resumable (docs/resume.md)
    nodes = json.loads(fleet.cluster.tsh("ls", "--format", "json").stdout)
    caps = {n["name"]: n["caps"] for n in nodes if n["name"] in want}
    assert caps == {k: ["resume"] for k in want}


def openssh_config(fleet: Fleet, identity: Path | None = None) -> tuple[Path, str]:
    """``tsh config`` for alice (optionally offering another identity), and the host name."""
    out = fleet.cluster.tsh("config")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    if identity is not None:  # same hub route as alice, another certificate inside SSH
        lines = []
        for line in text.splitlines():
            if line.strip().startswith("IdentityFile"):
                line = f'    IdentityFile "{identity}"'
            elif line.strip().startswith("CertificateFile"):
                line = f'    CertificateFile "{identity}-cert.pub"'
            lines.append(line)
        text = "\n".join(lines) + "\n"
    config = fleet.root / ("ssh_config" if identity is None else f"ssh_config-{identity.name}")
    config.write_text(text)
    status = json.loads(fleet.cluster.tsh("status", "--format", "json").stdout)
    return config, f"{NODE}.{status['cluster']}"


def ssh(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-F", str(config), "-o", "BatchMode=yes", *args],
        capture_output=True,
        text=True,
        input="",
        timeout=60,
    )


def test_openssh_through_tsh_proxy_checks_the_host_certificate(fleet: Fleet) -> None:
    config, host = openssh_config(fleet)
    assert "StrictHostKeyChecking yes" in config.read_text()
    run = ssh(config, f"{ME}@{host}", "echo via-openssh")
    assert (run.stdout, run.returncode) == ("via-openssh\n", 0), run.stderr
    # A host key the host CA did not sign is refused (same route, strict checking).
    other = fleet.root / "other-host-ca"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = fleet.root / "known_hosts-wrong-ca"
    known.write_text(f"@cert-authority * {(other.with_suffix('.pub')).read_text()}")
    run = ssh(config, "-o", f"UserKnownHostsFile={known}", f"{ME}@{host}", "true")
    assert run.returncode == 255 and "Host key verification failed" in run.stderr


def test_certificate_without_the_login_is_refused_by_sshd(fleet: Fleet) -> None:
    bob = fleet.root / "bob-id"
    fleet.cluster.tctl("auth", "sign", "--user", "bob", "--ttl", "1h", "-o", str(bob))
    config, host = openssh_config(fleet, identity=bob)
    run = ssh(config, f"{ME}@{host}", "true")
    assert run.returncode == 255
    assert "Permission denied (publickey)" in run.stderr, run.stderr
    assert run.stdout == ""
    wait_for(lambda: "not a listed principal" in fleet.sshd.log_text(), what="sshd's refusal")


def test_tsh_ssh_refused_by_the_devices_sshd(fleet: Fleet) -> None:
    """The hub lets alice in as our login; the device's sshd wants another principal."""
    run = fleet.cluster.tsh("ssh", f"{ME}@{STRICT}", "true")
    assert run.returncode == 255 and run.stdout == ""
    assert run.stderr.strip() == (
        f"tsh: node '{STRICT}' refused login '{ME}' with your certificate; "
        "check 'tsh status' for your logins or run 'tsh login' again"
    )


def test_target_down_is_a_clear_error_not_a_hang(fleet: Fleet) -> None:
    # (the subprocess timeouts are the "no hang": the agent refuses at once here)
    run = fleet.cluster.tsh("ssh", f"{ME}@{DOWN}", "true", timeout=30)
    assert run.returncode == 255
    line = run.stderr.strip()
    assert "\n" not in line
    assert line.startswith(f"tsh: node '{DOWN}': the device's sshd at 127.0.0.1:")
    assert "is unreachable (Connection refused)" in line
    # OpenSSH through tsh proxy ssh: the same line from tsh, then ssh's own, exit 255.
    config, host = openssh_config(fleet)
    run = ssh(config, f"{ME}@{host.replace(NODE, DOWN, 1)}", "true")
    assert run.returncode == 255 and line in run.stderr, run.stderr
    events = wait_for(
        lambda: len(found := fleet.audit("ssh.forward.start", DOWN)) == 2 and found,
        what="two failed starts",
    )
    assert all("Connection refused" in e["fields"]["error"] for e in events)
    assert {e["login"] for e in events} == {ME}
    assert fleet.audit("ssh.forward.end", DOWN) == []
    # Logged once per connection by the agent.
    log = (fleet.root / f"agent-{DOWN}.log").read_text()
    assert log.count("ssh target unreachable") == 2


def test_a_device_sshd_with_only_weak_algorithms_is_refused_clearly(fleet: Fleet) -> None:
    run = fleet.cluster.tsh("ssh", f"{ME}@{WEAK}", "true", timeout=30)
    assert run.returncode == 255 and run.stdout == "", run
    line = run.stderr.strip()
    assert line == (
        f"tsh: node '{WEAK}' offers no modern SSH algorithm (curve25519, AES-GCM or chacha20, "
        "Ed25519); its sshd needs updating or its weak-only settings removed (docs/security.md)"
    )


def test_tctl_auth_sign_host_options_and_errors(fleet: Fleet) -> None:
    key = fleet.root / "extra_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    cert = fleet.root / "extra_host_key-cert.pub"
    fleet.cluster.tctl(
        "auth", "sign", "--host", "gw-7", "--pubkey", f"{key}.pub", "--ttl", "2d", "-o", str(cert)
    )
    shown = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True
    ).stdout
    assert "host certificate" in shown and 'Key ID: "gw-7"' in shown
    status = json.loads(fleet.cluster.tsh("status", "--format", "json").stdout)
    principals = shown.split("Principals:")[1].split("Critical Options:")[0].split()
    assert principals == ["gw-7", f"gw-7.{status['cluster']}"]
    valid = shown.split("Valid: from ")[1].split()[2]  # from A to B
    assert valid.startswith(time.strftime("%Y-%m-%d", time.localtime(time.time() + 2 * 86400)))
    events = fleet.cluster.tctl_json("audit", "search", "--type", "cert.create", "--node", "hub")
    assert any(e["fields"].get("host") == "gw-7" for e in events)

    rsa = fleet.root / "rsa_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-N", "", "-f", str(rsa)], check=True)
    for args, message in (
        (("--host", "gw-7"), "--host needs --pubkey"),
        (("--host", "gw-7", "--pubkey", f"{rsa}.pub"), "is not an Ed25519 public key"),
        (("--host", "gw 7", "--pubkey", f"{key}.pub"), "bad node name"),
    ):
        run = fleet.cluster.tctl("auth", "sign", *args, "-o", str(cert), check=False)
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)
        assert run.stderr.count("\n") == 1, run.stderr
