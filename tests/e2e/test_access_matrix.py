"""Roles that hold, end to end: real hub, real agent, real tsh, real OpenSSH.

One cluster serves the whole module (roles are swapped with ``tctl create -f``
and new certificates issued), so the matrix stays cheap. Every case is tried
twice: through the hub with ``tsh ssh`` (the hub's check) and straight at the
agent's ``--local-listen`` port with OpenSSH (the device's own check, from the
certificate alone).
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import Cluster, free_port, wait_for

from remoteler.access import RULES_EXTENSION, Role, encode_rules, resolve_rules
from remoteler.ca import (
    DEFAULT_USER_EXTENSIONS,
    CertAuthority,
    generate_private_key,
    parse_certificate,
)
from remoteler.errors import RemotelerError
from remoteler.identity import UserIdentity, read_identity_file, write_identity_file
from tsh.ssh import open_ssh

ME = pwd.getpwuid(os.geteuid()).pw_name
LABELS = "env=lab,site=berlin,tier=infotainment"
ROLE = "matrix"


@dataclass
class Env:
    cluster: Cluster
    port: int
    known_hosts: Path

    @property
    def root(self) -> Path:
        return self.cluster.root


def _toml_role(
    name: str,
    logins: Sequence[str] = (),
    labels: dict[str, list[str]] | None = None,
    deny_logins: Sequence[str] = (),
    deny_labels: dict[str, list[str]] | None = None,
    max_ttl: str = "12h",
) -> str:
    def table(selector: dict[str, list[str]] | None) -> str:
        items = ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in (selector or {}).items())
        return "{ " + items + " }"

    return (
        f'kind = "role"\nname = "{name}"\nmax_session_ttl = "{max_ttl}"\n'
        f"[allow]\nlogins = {json.dumps(list(logins))}\nnode_labels = {table(labels)}\n"
        f"[deny]\nlogins = {json.dumps(list(deny_logins))}\nnode_labels = {table(deny_labels)}\n"
    )


def _create(env: Env, doc: str) -> None:
    path = env.root / "role.toml"
    path.write_text(doc)
    env.cluster.tctl("create", "-f", str(path))


def _sign(env: Env, user: str, name: str, ttl: str = "10m") -> Path:
    out = env.root / "ids" / name
    env.cluster.tctl("auth", "sign", "--user", user, "--ttl", ttl, "-o", str(out))
    return out


def _tsh_ssh(
    env: Env, ident: Path | None, command: str = "echo ok"
) -> subprocess.CompletedProcess[str]:
    prefix = ["-i", str(ident), "--proxy", env.cluster.addr] if ident else []
    return env.cluster.tsh(*prefix, "ssh", f"{ME}@dev1", command)


def _local_ssh(env: Env, ident: Path, command: str = "echo ok") -> subprocess.CompletedProcess[str]:
    """OpenSSH straight at the agent's local listener: no hub on the way."""
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(ident),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={env.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            f"HostKeyAlias={env.known_hosts.read_text().split()[1].replace('*', 'dev1', 1)}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(env.port),
            f"{ME}@127.0.0.1",
            command,
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"},
        timeout=30,
    )


def _refusals(env: Env) -> list[str]:
    log = (env.root / "agent-dev1.log").read_text(errors="replace")
    return [line for line in log.splitlines() if "ssh auth failed" in line]


def _device_refuses(env: Env, ident: Path, reason: str) -> None:
    before = len(_refusals(env))
    run = _local_ssh(env, ident)
    assert run.returncode == 255 and run.stdout == "", run
    lines = wait_for(
        lambda: _refusals(env)[before:], timeout=10, what="the agent's 'ssh auth failed' line"
    )
    assert reason in lines[0], lines


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    cluster = Cluster(tmp_path_factory.mktemp("access"), free_port())
    cluster.start_hub()
    try:
        port = free_port()
        env = Env(cluster, port, cluster.root / "known_hosts")
        _create(env, _toml_role(ROLE, [ME], {"*": ["*"]}))
        cluster.add_user("alice", [ME], roles=ROLE)
        cluster.start_agent("dev1", LABELS, None, "--local-listen", f"127.0.0.1:{port}")
        wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
        env.known_hosts.write_text(cluster.tctl("auth", "export", "--type", "host").stdout)
        yield env
    finally:
        cluster.stop()


# -- the matrix -----------------------------------------------------------------------

#: How the role treats the login ME: allows it, does not mention it, or denies it.
LOGIN_RULES = {
    "allow": {"logins": [ME]},
    "absent": {"logins": ["somebody"]},
    "deny": {"logins": [ME], "deny_logins": [ME]},
}
#: How the role treats dev1 (env=lab, site=berlin): regex allow, no match, regex deny.
LABEL_RULES = {
    "allow": {"labels": {"env": ["^(lab|bench)$"]}},
    "absent": {"labels": {"env": ["^prod-.*$", "staging"]}},
    "deny": {"labels": {"env": ["lab*"]}, "deny_labels": {"site": ["^ber(lin|n)$"]}},
}


#: What the hub says about a node the user's roles hide (as about a missing node).
HIDDEN = "node 'dev1' not found or access denied"


def _expected_reason(login: str, labels: str) -> str | None:
    """Deny rules first (either one wins), then the allow rules, as decide() does."""
    if login == "deny":
        return f"login '{ME}' is denied for user 'alice' by role '{ROLE}'"
    if labels == "deny":
        return f"node 'dev1' ({LABELS}) is denied to user 'alice' by role '{ROLE}'"
    if login == "absent":
        return f"login '{ME}' is not allowed for user 'alice'"
    if labels == "absent":
        return "matches no role of user 'alice'"
    return None


@pytest.mark.parametrize("labels", list(LABEL_RULES))
@pytest.mark.parametrize("login", list(LOGIN_RULES))
def test_matrix(env: Env, login: str, labels: str) -> None:
    _create(env, _toml_role(ROLE, **LOGIN_RULES[login], **LABEL_RULES[labels]))
    ident = _sign(env, "alice", f"{login}-{labels}")
    reason = _expected_reason(login, labels)

    hub = _tsh_ssh(env, ident)
    if reason is None:
        assert (hub.returncode, hub.stdout) == (0, "ok\n"), hub.stderr
        local = _local_ssh(env, ident)
        assert (local.returncode, local.stdout) == (0, "ok\n"), local.stderr
        return
    assert hub.returncode == 255 and hub.stdout == "", hub
    # A node the roles do not select (or deny) is one the user cannot list: the hub
    # answers as for a missing node, naming no labels. The device says why.
    hidden = labels != "allow"
    assert (HIDDEN if hidden else reason) in hub.stderr, hub.stderr
    assert not hidden or "site=" not in hub.stderr
    # the device decides alone: a login the roles refuse is not even a principal
    # (asyncssh refuses it); a denied node is refused from the signed rules
    _device_refuses(env, ident, reason if login == "allow" else "certificate refused")


# -- a deny in another role, through tsh login ------------------------------------------


def test_deny_role_beats_allow_role_until_removed(env: Env) -> None:
    cluster = env.cluster
    _create(env, _toml_role("no-berlin", deny_labels={"site": ["^berl.*$"]}))
    cluster.add_user("bob", [ME], roles="access,no-berlin")
    login = cluster.login("bob")
    assert login.returncode == 0, login.stderr
    assert ME in login.stdout

    refused = _tsh_ssh(env, None)
    assert refused.returncode == 255
    assert HIDDEN in refused.stderr, refused.stderr  # bob may not list dev1 any more
    listed = cluster.tsh("ls")
    assert listed.returncode == 0 and "dev1" not in listed.stdout, listed.stdout
    bob_key = cluster.tsh_home / "keys" / cluster.addr / "bob"
    _device_refuses(env, bob_key, "is denied to user 'bob' by role 'no-berlin'")

    cluster.tctl("rm", "role/no-berlin")
    # the hub reads the roles at once; the certificate still carries the deny,
    # and the device goes by the certificate until bob logs in again
    still = _tsh_ssh(env, None)
    assert still.returncode == 255 and "refused login" in still.stderr, still.stderr
    assert cluster.login("bob", offset_steps=1).returncode == 0  # a fresh TOTP step
    ok = _tsh_ssh(env, None)
    assert (ok.returncode, ok.stdout) == (0, "ok\n"), ok.stderr
    assert "dev1" in cluster.tsh("ls").stdout

    events = cluster.tctl_json("audit", "search", "--type", "role.deleted")
    assert [e["fields"]["name"] for e in events] == ["no-berlin"]


# -- TTL ----------------------------------------------------------------------------------


def test_ttl_is_capped_and_an_expired_certificate_is_refused_everywhere(env: Env) -> None:
    cluster = env.cluster
    _create(env, _toml_role("short", [ME], {"*": ["*"]}, max_ttl="1h"))
    cluster.add_user("carol", [ME], roles="short")
    capped = cluster.login("carol", "--ttl", "48h")
    assert capped.returncode == 0, capped.stderr
    assert "capped by your roles' max_session_ttl" in capped.stdout
    key = cluster.tsh_home / "keys" / cluster.addr / "carol"
    cert = parse_certificate(Path(f"{key}-cert.pub").read_text())
    assert cert.valid_before - time.time() <= 3600

    short = cluster.login("carol", "--ttl", "3s", offset_steps=1)
    assert short.returncode == 0, short.stderr
    ident = read_identity_file(key)
    wait_for(lambda: time.time() > ident.valid_before + 1, timeout=30, what="expiry")

    tsh = _tsh_ssh(env, None)
    assert tsh.returncode == 255 and "expired" in tsh.stderr, tsh.stderr
    with pytest.raises(RemotelerError):  # past tsh's own check: the hub refuses the TLS cert
        asyncio.run(_connect(env, ident))
    _device_refuses(env, key, "certificate refused")


async def _connect(env: Env, ident: UserIdentity) -> None:
    conn = await open_ssh(env.cluster.addr, ident, ME, "dev1")
    conn.close()


# -- another hub's CA ----------------------------------------------------------------------


def test_certificate_from_another_hubs_ca_is_refused(env: Env) -> None:
    other_user_ca = CertAuthority.generate("user", "elsewhere")
    key = generate_private_key()
    ext = dict(DEFAULT_USER_EXTENSIONS)
    ext[RULES_EXTENSION] = encode_rules(resolve_rules([Role("all", (ME,), {"*": ("*",)})], []))
    ssh_cert = other_user_ca.sign_ssh_user_cert(
        key.public_key(), key_id="alice", principals=[ME], ttl_seconds=600, extensions=ext
    )
    tls = other_user_ca.issue_x509(
        key.public_key(),
        common_name="alice",
        organization="remoteler-user",
        usage="client",
        ttl_seconds=600,
    )
    host_ca_pem = (env.cluster.data / "ca" / "host_ca.crt").read_bytes()
    path = env.root / "ids" / "elsewhere"
    write_identity_file(path, key, ssh_cert, tls, host_ca_pem)

    hub = _tsh_ssh(env, path)
    assert hub.returncode == 255 and hub.stdout == "", hub
    with pytest.raises(RemotelerError):
        asyncio.run(_connect(env, read_identity_file(path)))
    _device_refuses(env, path, "certificate refused")


# -- the device alone ------------------------------------------------------------------------


def test_device_applies_deny_rules_while_the_hub_is_down(env: Env) -> None:
    cluster = env.cluster
    _create(env, _toml_role(ROLE, [ME], {"*": ["*"]}))
    allowed = _sign(env, "alice", "offline-ok")
    _create(env, _toml_role(ROLE, [ME], {"*": ["*"]}, deny_labels={"tier": ["^info.*$"]}))
    denied = _sign(env, "alice", "offline-denied")
    cluster.kill_hub(signal.SIGTERM)
    try:
        ok = _local_ssh(env, allowed)
        assert (ok.returncode, ok.stdout) == (0, "ok\n"), ok.stderr
        _device_refuses(env, denied, f"node 'dev1' ({LABELS}) is denied to user 'alice'")
    finally:
        cluster.start_hub()
