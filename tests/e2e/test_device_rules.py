"""The device applies the access rules signed into the certificate, on its own.

The hub's check passes here (the user's role allows the node); only the
agent's own check can refuse, which proves it runs (it hooks asyncssh).
"""

from __future__ import annotations

import asyncio
import os
import pwd

import pytest
from helpers import Cluster, wait_for

from remoteler.access import RULES_EXTENSION, AccessRule, encode_rules
from remoteler.ca import DEFAULT_USER_EXTENSIONS, CertAuthority, generate_private_key
from remoteler.errors import AccessDenied
from remoteler.identity import UserIdentity
from tsh.ssh import open_ssh

ME = pwd.getpwuid(os.geteuid()).pw_name


def _identity(cluster: Cluster, user: str, rules: str | None) -> UserIdentity:
    ca = CertAuthority.load(cluster.data / "ca", "user")
    host_ca = CertAuthority.load(cluster.data / "ca", "host")
    key = generate_private_key()
    extensions = dict(DEFAULT_USER_EXTENSIONS)
    if rules is not None:
        extensions[RULES_EXTENSION] = rules
    ssh_cert = ca.sign_ssh_user_cert(
        key.public_key(), key_id=user, principals=[ME], ttl_seconds=600, extensions=extensions
    )
    tls = ca.issue_x509(key.public_key(), common_name=user, usage="client", ttl_seconds=600)
    return UserIdentity(key, ssh_cert, tls, host_ca.x509_pem)


async def _run(cluster: Cluster, ident: UserIdentity) -> str:
    conn = await open_ssh(cluster.addr, ident, ME, "dev1")
    try:
        result = await conn.run("echo inside", check=True)
        return str(result.stdout)
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("rules", "allowed"),
    [
        (encode_rules([AccessRule("lab", (ME,), {"env": ("lab",)})]), True),
        (encode_rules([AccessRule("prod", (ME,), {"env": ("prod",)})]), False),
        (encode_rules([AccessRule("lab", ("someone-else",), {"env": ("lab",)})]), False),
        (None, False),
        ("not json", False),
    ],
)
def test_device_enforces_signed_rules(cluster: Cluster, rules: str | None, allowed: bool) -> None:
    cluster.add_user("mallory", [ME])  # role "access": the hub lets her through
    cluster.start_agent("dev1", "env=lab")
    wait_for(lambda: cluster.node_online("dev1"), what="online")
    ident = _identity(cluster, "mallory", rules)
    if allowed:
        assert asyncio.run(_run(cluster, ident)) == "inside\n"
        return
    with pytest.raises(AccessDenied):
        asyncio.run(_run(cluster, ident))
    wait_for(
        lambda: "ssh auth failed" in (cluster.root / "agent-dev1.log").read_text(),
        what="refusal logged by the agent",
    )
