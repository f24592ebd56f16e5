"""Only modern SSH algorithms, end to end: the device's embedded server (reached on its
``--local-listen`` port) refuses every weak key exchange, cipher, MAC and host key
algorithm a client forces, with the real OpenSSH ``ssh`` and with asyncssh, and the
modern set connects (OpenSSH straight at the device, ``tsh ssh`` through the hub).

One hub and one agent for the module; each refusal is one handshake.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from helpers import Cluster, free_port, wait_for

from remoteler.ca import private_key_to_openssh
from remoteler.identity import read_identity_file
from remoteler.sshalgs import CIPHERS, kex_algs

ME = pwd.getpwuid(os.geteuid()).pw_name
NODE = "dev1"


@dataclass
class Env:
    cluster: Cluster
    port: int
    ident: Path
    known_hosts: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    assert shutil.which("ssh"), "OpenSSH's ssh is missing: apt-get install openssh-client"
    cluster = Cluster(tmp_path_factory.mktemp("sshalgs"), free_port())
    cluster.start_hub()
    try:
        port = free_port()
        cluster.add_user("alice", [ME])
        cluster.start_agent(NODE, "env=lab", None, "--local-listen", f"127.0.0.1:{port}")
        wait_for(lambda: cluster.node_online(NODE), what=f"{NODE} online")
        ident = cluster.root / "alice.id"
        cluster.tctl("auth", "sign", "--user", "alice", "--ttl", "10m", "-o", str(ident))
        known_hosts = cluster.root / "known_hosts"
        known_hosts.write_text(cluster.tctl("auth", "export", "--type", "host").stdout)
        yield Env(cluster, port, ident, known_hosts)
    finally:
        cluster.stop()


def openssh(env: Env, *options: str) -> subprocess.CompletedProcess[str]:
    """OpenSSH straight at the agent's local listener, with ``-o`` ``options`` forced."""
    forced = [arg for opt in options for arg in ("-o", opt)]
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(env.ident),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={env.known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            # NODE.<cluster>: the name the exported '@cert-authority *.<cluster>' line covers
            f"HostKeyAlias={env.known_hosts.read_text().split()[1].replace('*', NODE, 1)}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            *forced,
            "-p",
            str(env.port),
            f"{ME}@127.0.0.1",
            "echo ok",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"},
        timeout=30,
    )


#: (what OpenSSH is made to offer, the word its refusal names)
WEAK_OPENSSH = [
    ("KexAlgorithms=ecdh-sha2-nistp256", "key exchange"),
    ("KexAlgorithms=ecdh-sha2-nistp521", "key exchange"),
    ("KexAlgorithms=diffie-hellman-group-exchange-sha256", "key exchange"),
    ("KexAlgorithms=diffie-hellman-group16-sha512", "key exchange"),
    ("KexAlgorithms=diffie-hellman-group14-sha256", "key exchange"),
    ("KexAlgorithms=diffie-hellman-group14-sha1", "key exchange"),
    ("Ciphers=aes128-ctr", "cipher"),
    ("Ciphers=aes256-ctr", "cipher"),
    ("Ciphers=aes128-cbc", "cipher"),
    ("Ciphers=3des-cbc", "cipher"),
    ("HostKeyAlgorithms=ssh-rsa", "host key"),
    ("HostKeyAlgorithms=rsa-sha2-256", "host key"),
    ("HostKeyAlgorithms=ecdsa-sha2-nistp256", "host key"),
]


@pytest.mark.parametrize(("option", "what"), WEAK_OPENSSH, ids=[o for o, _ in WEAK_OPENSSH])
def test_openssh_forcing_a_weak_algorithm_is_refused(env: Env, option: str, what: str) -> None:
    run = openssh(env, option)
    assert run.returncode == 255 and run.stdout == "", run
    assert f"no matching {what}" in run.stderr, run.stderr


@pytest.mark.parametrize(
    "macs", ["hmac-sha2-256", "hmac-sha2-256-etm@openssh.com", "hmac-sha1", "umac-64@openssh.com"]
)
def test_openssh_with_a_mac_cipher_is_refused(env: Env, macs: str) -> None:
    """A MAC only counts with a non-AEAD cipher, and the server has none (not even -ctr)."""
    run = openssh(env, "Ciphers=aes128-ctr,aes256-ctr", f"MACs={macs}")
    assert run.returncode == 255 and run.stdout == "", run
    assert "no matching cipher" in run.stderr, run.stderr


@pytest.mark.parametrize(
    "options",
    [
        (),
        ("KexAlgorithms=curve25519-sha256",),
        ("KexAlgorithms=curve25519-sha256@libssh.org",),
        *[(f"Ciphers={cipher}",) for cipher in CIPHERS],
        ("HostKeyAlgorithms=ssh-ed25519-cert-v01@openssh.com",),
    ],
    ids=lambda o: ",".join(o) or "defaults",
)
def test_openssh_with_modern_algorithms_connects(env: Env, options: tuple[str, ...]) -> None:
    run = openssh(env, *options)
    assert (run.returncode, run.stdout) == (0, "ok\n"), run.stderr


async def asyncssh_run(env: Env, **options: Any) -> str:
    ident = read_identity_file(env.ident)
    key = asyncssh.import_private_key(private_key_to_openssh(ident.key))
    cert = asyncssh.import_certificate(ident.ssh_cert)
    async with asyncssh.connect(
        "127.0.0.1",
        env.port,
        config=None,
        username=ME,
        client_keys=[(key, cert)],
        known_hosts=None,  # the algorithms are tested here; OpenSSH checks the host above
        agent_path=None,
        connect_timeout=10,
        **options,
    ) as conn:
        result = await conn.run("echo ok", check=True)
        return str(result.stdout)


#: The server refuses in its key exchange: the client sees the refusal itself (it
#: compares the lists too), or the connection reset when the server hung up first.
REFUSED = (asyncssh.KeyExchangeFailed, asyncssh.ConnectionLost)


def assert_refusal(exc: BaseException) -> None:
    if isinstance(exc, asyncssh.KeyExchangeFailed):
        assert "No matching" in str(exc) or "compatible server host key" in str(exc), exc


WEAK_ASYNCSSH: list[tuple[str, str]] = [
    ("kex_algs", "ecdh-sha2-nistp256"),
    ("kex_algs", "ecdh-sha2-nistp384"),
    ("kex_algs", "curve448-sha512"),
    ("kex_algs", "mlkem768nistp256-sha256"),
    ("kex_algs", "diffie-hellman-group-exchange-sha256"),
    ("kex_algs", "diffie-hellman-group-exchange-sha1"),
    ("kex_algs", "diffie-hellman-group14-sha256"),
    ("kex_algs", "diffie-hellman-group14-sha1"),
    ("kex_algs", "diffie-hellman-group1-sha1"),
    ("kex_algs", "rsa2048-sha256"),
    ("encryption_algs", "aes128-ctr"),
    ("encryption_algs", "aes256-ctr"),
    ("encryption_algs", "aes128-cbc"),
    ("encryption_algs", "3des-cbc"),
    ("encryption_algs", "arcfour256"),
    ("server_host_key_algs", "ssh-rsa"),
    ("server_host_key_algs", "rsa-sha2-512"),
    ("server_host_key_algs", "ecdsa-sha2-nistp256"),
    ("server_host_key_algs", "ssh-ed448"),
]


@pytest.mark.parametrize(("option", "alg"), WEAK_ASYNCSSH, ids=[a for _, a in WEAK_ASYNCSSH])
async def test_asyncssh_forcing_a_weak_algorithm_is_refused(
    env: Env, option: str, alg: str
) -> None:
    with pytest.raises(REFUSED) as err:
        await asyncssh_run(env, **{option: [alg]})
    assert_refusal(err.value)


async def test_asyncssh_with_a_mac_cipher_is_refused(env: Env) -> None:
    with pytest.raises(REFUSED) as err:
        await asyncssh_run(
            env, encryption_algs=["aes128-ctr"], mac_algs=["hmac-sha2-256-etm@openssh.com"]
        )
    assert_refusal(err.value)


@pytest.mark.parametrize("alg", kex_algs())
async def test_asyncssh_with_each_modern_kex_connects(env: Env, alg: str) -> None:
    assert await asyncssh_run(env, kex_algs=[alg]) == "ok\n"


def test_the_installed_asyncssh_does_post_quantum_key_exchange() -> None:
    """asyncssh 2.24 does ML-KEM with cryptography's own OpenSSL (its wheels): on offer here."""
    assert kex_algs()[0] == "mlkem768x25519-sha256", kex_algs()


def test_tsh_ssh_through_the_hub_connects_and_refuses_a_weak_cipher(env: Env) -> None:
    cluster = env.cluster
    prefix = ["-i", str(env.ident), "--proxy", cluster.addr]
    run = cluster.tsh(*prefix, "ssh", f"{ME}@{NODE}", "echo ok")
    assert (run.returncode, run.stdout) == (0, "ok\n"), run.stderr
    weak = cluster.tsh(*prefix, "ssh", "-c", "aes128-ctr", f"{ME}@{NODE}", "echo ok")
    assert weak.returncode == 255, weak
    assert weak.stderr.startswith("tsh: cipher 'aes128-ctr' is not offered"), weak.stderr
