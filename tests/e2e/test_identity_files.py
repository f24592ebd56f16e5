"""Identity files and certificates with the real OpenSSH tools.

- ``tctl auth sign --user jenkins --ttl 8h -o jenkins`` works as is with
  ``ssh -i jenkins -F <config>`` and ``tsh -i jenkins`` on a box that never ran
  ``tsh login`` (the config from ``tsh config -i jenkins --proxy HOST:PORT``).
- Keys ``tsh login`` loads into a running ``ssh-agent`` alone authenticate plain
  ``ssh`` (no key file offered), and stop working after ``tsh logout``.
- ``ssh-keygen -L`` reads every certificate we write, with the fields we mean.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers import Cluster, free_port, stop_process, wait_for
from require import require_binaries

ME = pwd.getpwuid(os.geteuid()).pw_name
NODE = "ci-node"
TOOLS = ("ssh", "ssh-agent", "ssh-add", "ssh-keygen")


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    """What this module runs: present, or every test fails with a one-line hint."""
    require_binaries("ssh", "ssh-agent", "ssh-add", "ssh-keygen")


@dataclass
class Fleet:
    cluster: Cluster
    root: Path
    name: str
    """The cluster name (host names are ``<node>.<name>``)."""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("identity")
    cluster = Cluster(root, free_port())
    cluster.start_hub()
    try:
        cluster.add_user("alice", [ME])
        cluster.add_user("jenkins", [ME])
        cluster.add_user("carol", [ME])  # her own one-time codes: a code is accepted once
        cluster.start_agent(NODE, "env=ci")
        wait_for(lambda: cluster.node_online(NODE), what="node online")
        name = cluster.tctl_json("status")["cluster"]
        yield Fleet(cluster, root, str(name))
    finally:
        cluster.stop()


def _sign(fleet: Fleet, user: str, path: Path, ttl: str = "8h") -> None:
    fleet.cluster.tctl("auth", "sign", "--user", user, "--ttl", ttl, "-o", str(path))


def _ssh(*argv: str, env: dict[str, str], input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["ssh", "-o", "BatchMode=yes", *argv],
        input=input,
        capture_output=True,
        env=env,
        timeout=60,
    )


# --- ssh-keygen -L ------------------------------------------------------------------------


@dataclass
class KeygenL:
    """What ``ssh-keygen -L -f CERT`` says, field by field."""

    type: str
    key_id: str
    signing_ca: str
    valid_from: float
    valid_to: float
    principals: list[str]
    critical: list[str]
    extensions: list[str]


def keygen_l(path: Path) -> KeygenL:
    out = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "TZ": "UTC"},  # "Valid:" is printed in local time
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    fields: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    current = ""
    for raw in out.stdout.splitlines()[1:]:
        line = raw.strip()
        if raw.startswith("\t\t") or raw.startswith(" " * 16):
            lists[current].append(line)
            continue
        key, _, value = line.partition(":")
        current = key
        fields[key] = value.strip()
        lists[key] = []
    if fields["Valid"] == "forever":  # valid_after 0, valid_before 2**64-1
        span = (0.0, float("inf"))
    else:
        m = re.fullmatch(r"from (\S+) to (\S+)", fields["Valid"])
        assert m, fields["Valid"]
        span = tuple(datetime.fromisoformat(t).replace(tzinfo=UTC).timestamp() for t in m.groups())
    return KeygenL(
        type=fields["Type"],
        key_id=fields["Key ID"].strip('"'),
        signing_ca=fields["Signing CA"].split()[1],
        valid_from=span[0],
        valid_to=span[1],
        principals=lists["Principals"],
        critical=lists["Critical Options"],
        extensions=[e.split()[0] for e in lists["Extensions"]],
    )


def _ca_fingerprint(fleet: Fleet, kind: str) -> str:
    line = fleet.cluster.tctl("auth", "export", "--type", kind).stdout.splitlines()[0]
    key = line.split(None, 2)[2] if kind == "host" else line  # @cert-authority PATTERN KEY
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", "-"], input=key, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[1]


USER_EXTENSIONS = [
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
    "remoteler-roles@remoteler",
    "remoteler-rules@remoteler",
]


def _check_user_cert(fleet: Fleet, path: Path, user: str, ttl: float) -> None:
    cert = keygen_l(path)
    assert cert.type == "ssh-ed25519-cert-v01@openssh.com user certificate"
    assert cert.key_id == user
    assert cert.signing_ca == _ca_fingerprint(fleet, "user")
    assert cert.principals == [ME]
    assert cert.critical == []
    assert sorted(cert.extensions) == USER_EXTENSIONS
    assert cert.valid_from <= time.time() <= cert.valid_to
    assert abs((cert.valid_to - cert.valid_from) - ttl) <= 120  # issued with a little back-dating


def test_keygen_reads_the_user_cert_from_tsh_login(fleet: Fleet) -> None:
    login = fleet.cluster.login("alice", "--ttl", "2h")
    assert login.returncode == 0, login.stderr
    path = fleet.cluster.tsh_home / "keys" / fleet.cluster.addr / "alice-cert.pub"
    _check_user_cert(fleet, path, "alice", 2 * 3600)


def test_keygen_reads_the_identity_from_tctl_auth_sign(fleet: Fleet, tmp_path: Path) -> None:
    _sign(fleet, "jenkins", tmp_path / "jenkins")
    _check_user_cert(fleet, tmp_path / "jenkins-cert.pub", "jenkins", 8 * 3600)


def test_keygen_reads_the_node_host_cert(fleet: Fleet) -> None:
    cert = keygen_l(fleet.root / f"agent-{NODE}" / "identity" / "node-cert.pub")
    assert cert.type == "ssh-ed25519-cert-v01@openssh.com host certificate"
    assert cert.signing_ca == _ca_fingerprint(fleet, "host")
    node_id = cert.key_id
    assert node_id and cert.principals == [node_id, NODE, f"{NODE}.{fleet.name}"]
    assert cert.critical == [] and cert.extensions == []
    # Node host certs do not expire (remoteler.ca.authority): a CA rotation replaces them.
    assert (cert.valid_from, cert.valid_to) == (0.0, float("inf"))


def test_keygen_reads_a_host_cert_from_tctl_auth_sign_host(fleet: Fleet, tmp_path: Path) -> None:
    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
    )
    out = tmp_path / "ssh_host_ed25519_key-cert.pub"
    signed = fleet.cluster.tctl(
        "auth", "sign", "--host", "old-plc", "--pubkey", f"{key}.pub", "--ttl", "30d",
        "-o", str(out), check=False,
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    cert = keygen_l(out)
    assert cert.type == "ssh-ed25519-cert-v01@openssh.com host certificate"
    assert cert.key_id == "old-plc"
    assert cert.signing_ca == _ca_fingerprint(fleet, "host")
    assert cert.principals == ["old-plc", f"old-plc.{fleet.name}"]
    assert cert.critical == [] and cert.extensions == []
    assert abs((cert.valid_to - cert.valid_from) - 30 * 86400) <= 120


def test_tctl_auth_sign_host_never_overwrites_the_host_key(fleet: Fleet, tmp_path: Path) -> None:
    key = tmp_path / "ssh_host_ed25519_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30
    )
    private, public = key.read_bytes(), Path(f"{key}.pub").read_bytes()
    for out in (key, Path(f"{key}.pub"), tmp_path / "." / key.name):
        run = fleet.cluster.tctl(
            "auth", "sign", "--host", "old-plc", "--pubkey", f"{key}.pub", "-o", str(out),
            check=False,
        )  # fmt: skip
        assert run.returncode == 2, run.stderr
        assert run.stderr.count("\n") == 1 and "would overwrite the host key" in run.stderr
        assert f"-o {key}-cert.pub" in run.stderr, run.stderr
    assert (key.read_bytes(), Path(f"{key}.pub").read_bytes()) == (private, public)

    binary = tmp_path / "binary.pub"
    binary.write_bytes(b"\xff\xfe\x00ssh-ed25519 \x80\x81")
    run = fleet.cluster.tctl(
        "auth", "sign", "--host", "old-plc", "--pubkey", str(binary),
        "-o", str(tmp_path / "c.pub"), check=False,
    )  # fmt: skip
    assert run.returncode == 2 and "is not an Ed25519 public key" in run.stderr, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr


# --- Jenkins: an identity file, no tsh login ------------------------------------------------


def test_jenkins_identity_works_with_ssh_and_tsh(fleet: Fleet, tmp_path: Path) -> None:
    # What a CI box has: the four files, no ~/.tsh; in a workspace whose path has a space
    # and a '%' (ssh_config expands %-tokens, ProxyCommand runs with the shell).
    box = tmp_path / "jenkins box %h"
    box.mkdir()
    _sign(fleet, "jenkins", box / "jenkins")
    assert stat.S_IMODE((box / "jenkins").stat().st_mode) == 0o600
    assert (box / "jenkins-cert.pub").exists()
    env = fleet.cluster.env(TSH_HOME=str(tmp_path / "never-logged-in"))
    ident = ("-i", str(box / "jenkins"), "--proxy", fleet.cluster.addr)

    run = fleet.cluster.tsh(*ident, "ssh", f"{ME}@{NODE}", "echo via tsh", env=env)
    assert (run.returncode, run.stdout) == (0, "via tsh\n"), run.stderr
    (tmp_path / "art.txt").write_text("artifact")
    run = fleet.cluster.tsh(
        *ident, "scp", "-q", str(tmp_path / "art.txt"), f"{ME}@{NODE}:{tmp_path}/art.up", env=env
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "art.up").read_text() == "artifact"

    out = fleet.cluster.tsh(*ident, "config", env=env)
    assert out.returncode == 0, out.stderr
    config = box / "ssh_config"
    config.write_text(out.stdout)
    relay = shlex.quote(str(box / "jenkins")).replace("%", "%%")
    assert f"-i {relay} --proxy {fleet.cluster.addr} proxy ssh" in out.stdout
    assert (box / "jenkins-known_hosts").read_text().startswith(f"@cert-authority *.{fleet.name} ")
    host = f"{ME}@{NODE}.{fleet.name}"
    key = str(box / "jenkins").replace("%", "%%")  # ssh expands %-tokens in -i too
    run = _ssh("-i", key, "-F", str(config), host, "echo via ssh", env=env)
    assert (run.returncode, run.stdout) == (0, b"via ssh\n"), run.stderr
    assert not (tmp_path / "never-logged-in" / "profile").exists()


# --- ssh-agent only ---------------------------------------------------------------------------


def _agent_only_config(text: str) -> str:
    """The ``tsh config`` block without its key files: ssh may use the agent's keys only."""
    keep = [
        line
        for line in text.splitlines()
        if line.split()[:1] not in (["IdentityFile"], ["CertificateFile"], ["IdentitiesOnly"])
    ]
    return "\n".join([*keep, "    IdentityFile none", "    IdentitiesOnly no", ""])


def test_ssh_authenticates_with_the_agents_keys_alone(fleet: Fleet, tmp_path: Path) -> None:
    """The relay (ProxyCommand) uses a separate identity; SSH auth can only come from the agent.

    So after ``tsh logout`` the hub path still works and the refusal is the node's
    ``Permission denied (publickey)``: the agent no longer holds the certificate.
    """
    relay = tmp_path / "relay-id"
    _sign(fleet, "carol", relay)
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(sock.exists, what="ssh-agent socket")
        env = fleet.cluster.env(TSH_HOME=str(tmp_path / "tsh"), SSH_AUTH_SOCK=str(sock))
        login = fleet.cluster.tsh(
            "login", "--proxy", fleet.cluster.addr, "--user", "carol",
            "--ca-pin", fleet.cluster.ca_pin(), "--otp", _totp(), input=_password(), env=env,
        )  # fmt: skip
        assert login.returncode == 0, login.stderr
        assert "ssh-agent" in login.stdout
        listed = subprocess.run(["ssh-add", "-L"], env=env, capture_output=True, text=True)
        assert listed.stdout.startswith("ssh-ed25519-cert-v01@openssh.com "), listed.stdout

        out = fleet.cluster.tsh("-i", str(relay), "--proxy", fleet.cluster.addr, "config", env=env)
        assert out.returncode == 0, out.stderr
        config = tmp_path / "agent_only.conf"
        config.write_text(_agent_only_config(out.stdout))
        host = f"{ME}@{NODE}.{fleet.name}"
        run = _ssh("-v", "-F", str(config), host, "echo agent ok", env=env)
        assert (run.returncode, run.stdout) == (0, b"agent ok\n"), run.stderr
        offered = [
            line for line in run.stderr.decode().splitlines() if "Offering public key" in line
        ]
        assert offered and all("agent" in line for line in offered), offered

        assert fleet.cluster.tsh("logout", env=env).returncode == 0
        run = _ssh("-F", str(config), host, "echo agent ok", env=env)
        assert run.returncode == 255 and run.stdout == b""
        assert b"Permission denied (publickey)" in run.stderr, run.stderr
    finally:
        stop_process(agent)


def _totp() -> str:
    from helpers import current_totp

    return current_totp()


def _password() -> str:
    from helpers import PASSWORD

    return PASSWORD + "\n"


def test_status_of_an_identity_file_needs_no_profile(fleet: Fleet, tmp_path: Path) -> None:
    _sign(fleet, "jenkins", tmp_path / "jenkins", ttl="1h")
    env = fleet.cluster.env(TSH_HOME=str(tmp_path / "none"))
    run = fleet.cluster.tsh(
        "-i", str(tmp_path / "jenkins"), "--proxy", fleet.cluster.addr, "status",
        "--format", "json", env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    assert data["user"] == "jenkins" and data["logins"] == [ME] and not data["expired"]


def test_an_expired_identity_says_to_sign_a_new_one(fleet: Fleet, tmp_path: Path) -> None:
    _sign(fleet, "jenkins", tmp_path / "old", ttl="1s")
    expires = keygen_l(tmp_path / "old-cert.pub").valid_to
    wait_for(lambda: time.time() > expires + 1, what="expiry")
    run = fleet.cluster.tsh(
        "-i", str(tmp_path / "old"), "--proxy", fleet.cluster.addr, "ssh", f"{ME}@{NODE}", "true",
        env=fleet.cluster.env(TSH_HOME=str(tmp_path / "none")),
    )  # fmt: skip
    assert run.returncode == 255
    assert run.stderr == (
        f"tsh: the identity {tmp_path / 'old'} has expired: write a new one with 'tctl auth sign'\n"
    )
