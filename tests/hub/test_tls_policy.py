"""The hub's TLS policy against a real OpenSSL client: TLS 1.3 only, key exchange
with X25519, P-256 or P-384 and nothing else (docs/security.md)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hubkit import Hub, running_hub

from hub.datadir import DataDir
from remoteler.tlsutil import HUB_GROUPS, server_context, set_groups


@pytest.fixture
async def started(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path) as h:
        yield h


async def s_client(hub: Hub, *args: str) -> tuple[int, str]:
    """Run ``openssl s_client`` against the hub; (exit status, what it printed)."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command line tool is needed: apt-get install openssl"
    proc = await asyncio.create_subprocess_exec(
        openssl,
        "s_client",
        "-connect",
        f"127.0.0.1:{hub.port}",
        "-brief",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.parametrize(
    ("group", "shown"), [("X25519", "X25519"), ("P-256", "prime256v1"), ("P-384", "secp384r1")]
)
async def test_the_groups_we_offer_work(started: Hub, group: str, shown: str) -> None:
    code, out = await s_client(started, "-groups", group)
    assert code == 0, out
    assert "Protocol version: TLSv1.3" in out, out
    key_line = next(line for line in out.splitlines() if "Temp Key:" in line)
    assert shown in key_line, out


@pytest.mark.parametrize("group", ["ffdhe2048", "ffdhe8192", "secp521r1", "X448"])
async def test_other_groups_are_refused(started: Hub, group: str) -> None:
    code, out = await s_client(started, "-groups", group)
    assert code != 0, out
    assert "CONNECTION ESTABLISHED" not in out, out


@pytest.mark.parametrize(
    "args",
    [
        ("-tls1_2", "-cipher", "AES128-SHA"),
        ("-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256"),
        ("-tls1_1",),
    ],
)
async def test_tls_before_1_3_is_refused(started: Hub, args: tuple[str, ...]) -> None:
    code, out = await s_client(started, *args)
    assert code != 0, out
    assert "CONNECTION ESTABLISHED" not in out, out


def test_set_groups_checks_what_it_writes_to(tmp_path: Path) -> None:
    """The ctypes path reads two values back before writing: a context that does not
    match what it expects (here: TLS 1.2 allowed) is left alone."""
    data = DataDir(tmp_path / "hub")
    data.init("test")
    host_ca = data.load_ca("host")
    cert, key = data.issue_server_identity(host_ca, ["127.0.0.1"])
    assert set_groups(server_context(cert, key, [host_ca.x509_pem]), HUB_GROUPS)
    loose = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    loose.minimum_version = ssl.TLSVersion.TLSv1_2
    assert not set_groups(loose, HUB_GROUPS)
    strict = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    strict.minimum_version = ssl.TLSVersion.TLSv1_3
    assert not set_groups(strict, ("no-such-group",))  # OpenSSL refuses unknown names
