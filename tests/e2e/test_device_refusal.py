"""The device refuses a bad SSH certificate even when the hub let the connection through.

The hub only checks the x509 certificate; these identities carry a valid one, so
each refusal here is the edge agent's own decision.
"""

from __future__ import annotations

import os
import pwd
import time

import pytest
from helpers import Cluster, wait_for

from remoteler.access import ACCESS_ROLE, RULES_EXTENSION, encode_rules, resolve_rules
from remoteler.ca import DEFAULT_USER_EXTENSIONS, CertAuthority, generate_private_key
from remoteler.errors import AccessDenied
from remoteler.identity import UserIdentity
from tsh.ssh import open_ssh

ME = pwd.getpwuid(os.geteuid()).pw_name
USER = "mallory"


def _identity(
    cluster: Cluster,
    ssh_ca: CertAuthority | None = None,
    now: int | None = None,
    rule_logins: tuple[str, ...] = (ME,),
) -> UserIdentity:
    """A valid x509 cert from the cluster's user CA; the SSH cert from ``ssh_ca`` at ``now``,
    with principal ``ME`` and access rules allowing ``rule_logins``."""
    ca_dir = cluster.data / "ca"
    user_ca = CertAuthority.load(ca_dir, "user")
    host_ca_pem = CertAuthority.paths(ca_dir, "host")[2].read_bytes()
    key = generate_private_key()
    extensions = dict(DEFAULT_USER_EXTENSIONS)
    extensions[RULES_EXTENSION] = encode_rules(resolve_rules([ACCESS_ROLE], rule_logins))
    ssh_cert = (ssh_ca or user_ca).sign_ssh_user_cert(
        key.public_key(),
        key_id=USER,
        principals=[ME],
        ttl_seconds=600,
        now=int(time.time()) if now is None else now,
        extensions=extensions,
    )
    tls_cert = user_ca.issue_x509(
        key.public_key(),
        common_name=USER,
        organization="remoteler-user",
        usage="client",
        ttl_seconds=600,
    )
    return UserIdentity(key, ssh_cert, tls_cert, host_ca_pem)


def _ready(cluster: Cluster) -> None:
    cluster.add_user(USER, [ME])
    cluster.start_agent("dev1", "env=lab")
    wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")


def _auth_failures(cluster: Cluster) -> list[str]:
    log = (cluster.root / "agent-dev1.log").read_text(errors="replace")
    return [line for line in log.splitlines() if "ssh auth failed" in line]


async def test_good_certificate_is_accepted(cluster: Cluster) -> None:
    _ready(cluster)
    conn = await open_ssh(cluster.addr, _identity(cluster), ME, "dev1")
    try:
        result = await conn.run("echo ok", check=False)
    finally:
        conn.close()
        await conn.wait_closed()
    assert (result.stdout, result.exit_status) == ("ok\n", 0)
    assert _auth_failures(cluster) == []


@pytest.mark.parametrize("case", ["expired", "not-yet-valid", "other-ca", "rules-deny"])
async def test_device_refuses_bad_ssh_certificate(cluster: Cluster, case: str) -> None:
    _ready(cluster)
    if case == "expired":
        ident = _identity(cluster, now=int(time.time()) - 3600)
    elif case == "not-yet-valid":
        ident = _identity(cluster, now=int(time.time()) + 3600)
    elif case == "other-ca":
        ident = _identity(cluster, ssh_ca=CertAuthority.generate("user", "test"))
    else:
        # asyncssh accepts this one (right CA, login among the principals); the
        # rules signed into it do not allow the login, and only authz.py sees that
        ident = _identity(cluster, rule_logins=("someone-else",))
    with pytest.raises(AccessDenied, match="node 'dev1' refused login"):
        await open_ssh(cluster.addr, ident, ME, "dev1")
    lines = wait_for(lambda: _auth_failures(cluster), timeout=10, what="'ssh auth failed' logged")
    if case == "rules-deny":
        assert f"login '{ME}' is not allowed for user '{USER}'" in lines[0], lines
    # the hub let it through: the refusal was the device's
    assert "connect denied" not in (cluster.root / "hub.log").read_text(errors="replace")
