"""The hub's TLS policy against a real OpenSSL client: TLS 1.3 only, key exchange
with X25519, P-256 or P-384 and nothing else (docs/security.md)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import sys
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
from hubkit import Hub, running_hub

from hub.datadir import DataDir
from hub.net.tlswatch import HandshakeDeadline, WatchedContext
from remoteler import tlsutil
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


class _NoLib:
    """Stands in for ``_ssl``'s library: any function taken from it is a failure."""

    def __init__(self, _path: str) -> None:
        pass

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"{name} looked up: something would be read through a pointer")


def _hub_ctx(tmp_path: Path) -> ssl.SSLContext:
    data = DataDir(tmp_path / "hub")
    data.init("test")
    host_ca = data.load_ca("host")
    cert, key = data.issue_server_identity(host_ca, ["127.0.0.1"])
    return server_context(cert, key, [host_ca.x509_pem])


def test_set_groups_reads_no_memory_of_what_is_not_cpythons_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pointer is read at ``id(ctx)`` + the object header: meaningless for an
    object that only looks like a context (the listener hands asyncio such a wrapper,
    hub/net/tlswatch.py, whose first field is a Python object) or on another Python."""
    ctx = _hub_ctx(tmp_path)
    monkeypatch.setattr(tlsutil.ctypes, "CDLL", _NoLib)
    look_alike = WatchedContext(ctx, HandshakeDeadline(0.0, 5.0, 15.0), lambda: 0.0)
    assert look_alike.minimum_version is ssl.TLSVersion.TLSv1_3  # it passes for one
    assert not set_groups(cast(ssl.SSLContext, look_alike), HUB_GROUPS)
    monkeypatch.setattr(sys, "implementation", types.SimpleNamespace(name="pypy"))
    assert not set_groups(ctx, HUB_GROUPS)


def test_set_groups_uses_the_ssl_modules_own_when_there_is_one(tmp_path: Path) -> None:
    """Python 3.15 adds ``SSLContext.set_groups`` (gh-136306): no ctypes then."""
    calls: list[str] = []

    class WithSetGroups(ssl.SSLContext):
        def set_groups(self, groups: str) -> None:
            calls.append(groups)

    ctx = WithSetGroups(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    assert set_groups(ctx, HUB_GROUPS)
    assert calls == ["X25519:P-256:P-384"]
