"""Helpers and fixtures for the hub's unit tests: a real SQLite file, real CAs, a real hub
on loopback. tests/hub/conftest.py exposes the fixtures to pytest."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from websockets.asyncio.client import connect

from hub.api.server import HubServer
from hub.auth import secrets as hs
from hub.auth.service import AuthService
from hub.datadir import DataDir
from hub.net.listener import ListenerLimits
from hub.storage.api import Storage
from hub.storage.sqlite import open_sqlite
from remoteler.ca import (
    CertAuthority,
    generate_private_key,
    private_key_to_pkcs8_pem,
    public_key_to_openssh,
)
from remoteler.protocol import TUNNEL_ALPN, TUNNEL_SUBPROTOCOL
from remoteler.tlsutil import client_context, server_context
from remoteler.wire.aio import ChannelRequest, Tunnel
from remoteler.wire.connection import Connection, Role
from remoteler.wire.limits import Limits

TOTP_SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
PASSWORD = "correct horse battery staple"


class Clock:
    """A settable clock for AuthService; starts at the real time (x509 uses the real one)."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def new_key_line() -> tuple[bytes, str]:
    """A fresh Ed25519 key: (PKCS#8 PEM, OpenSSH public line)."""
    key = generate_private_key()
    return private_key_to_pkcs8_pem(key), public_key_to_openssh(key.public_key())


@pytest.fixture
def fast_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Argon2id with test-sized costs: the same code paths, ~1 ms instead of ~0.2 s a hash.

    test_secrets.py checks the production parameters; the hub's login-flood test
    keeps them to show they do not stall the event loop.
    """
    cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(hs, "_hasher", cheap)
    monkeypatch.setattr(hs, "_DUMMY_HASH", cheap.hash("dummy"))


@pytest.fixture
async def storage(tmp_path: Path) -> AsyncIterator[Storage]:
    db = await open_sqlite(tmp_path)
    try:
        yield db
    finally:
        await db.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(storage: Storage, clock: Clock) -> AuthService:
    return AuthService(
        storage,
        CertAuthority.generate("user", "test"),
        CertAuthority.generate("host", "test"),
        "test",
        clock=clock,
    )


@dataclass
class Hub:
    server: HubServer
    auth: AuthService
    storage: Storage
    port: int

    def url(self, path: str) -> str:
        return f"wss://127.0.0.1:{self.port}{path}"

    def tls(
        self,
        cert_pem: bytes | None = None,
        key_pem: bytes | None = None,
        alpn: list[str] | None = None,
    ) -> object:
        return client_context(self.auth.host_ca.x509_pem, cert_pem, key_pem, alpn)

    async def node_creds(self, name: str = "node-1") -> tuple[bytes, bytes]:
        """Join a node with a fresh token; return its (x509 cert PEM, PKCS#8 key PEM)."""
        token, _ = await self.auth.add_token("node", 600, {})
        key_pem, pub = new_key_line()
        joined = await self.auth.join(token, name, {}, pub, "test")
        return joined["tls_cert"].encode(), key_pem

    async def user_creds(self, name: str = "alice") -> tuple[bytes, bytes]:
        """Create a user (invite only: no Argon2 cost); return (x509 cert PEM, key PEM)."""
        user, _ = await self.auth.add_user(name, ["access"], ["pi"])
        key_pem, pub = new_key_line()
        issued = await self.auth.issue_user_certs(user, pub, None)
        return issued.tls_cert.encode(), key_pem


class FakeAgent:
    """An agent's side of a real tunnel to a running hub: TLS with a joined node's
    certificate, websockets, the tunnel protocol. Subclasses answer channels."""

    tunnel: Tunnel | None = None
    task: asyncio.Task[None] | None = None

    async def on_channel(self, request: ChannelRequest) -> None:
        raise NotImplementedError

    async def dial(self, hub: Hub, name: str, query: str = "") -> None:
        """Join ``name`` and open its tunnel; ``query`` is appended to the tunnel URL."""
        creds = await hub.node_creds(name)
        ws = await connect(
            hub.url("/v1/tunnel?heartbeat=30&misses=3" + query),
            ssl=hub.tls(*creds, alpn=[TUNNEL_ALPN]),
            compression=None,
            subprotocols=[TUNNEL_SUBPROTOCOL],  # type: ignore[list-item]
        )
        limits = Limits(send_heartbeats=True)
        self.tunnel = Tunnel(ws, Connection(Role.DIALER, limits), on_channel=self.on_channel)
        self.task = asyncio.ensure_future(self.tunnel.run())

    async def close(self) -> None:
        if self.tunnel is not None:
            await self.tunnel.close()
        if self.task is not None:
            await self.task


@contextlib.asynccontextmanager
async def running_hub(
    tmp_path: Path, listener_limits: ListenerLimits | None = None, audit: bool = False
) -> AsyncIterator[Hub]:
    """A HubServer assembled as ``hub start`` does, on 127.0.0.1 port 0."""
    data = DataDir(tmp_path / "hubdata")
    cluster = data.init("test")
    user_ca, host_ca = data.load_ca("user"), data.load_ca("host")
    cert, key = data.issue_server_identity(host_ca, ["127.0.0.1"])
    ssl_ctx = server_context(cert, key, [user_ca.x509_pem, host_ca.x509_pem])
    storage = await open_sqlite(data.path)
    auth = AuthService(storage, user_ca, host_ca, cluster)
    # the hub's own audit.db (DATA/audit.db, as ``hub start``), not a second handle
    server = HubServer(
        auth, storage, audit=storage.audit if audit else None, listener_limits=listener_limits
    )
    _, port = await server.start("127.0.0.1", 0, ssl_ctx)
    try:
        yield Hub(server, auth, storage, port)
    finally:
        await server.close()
        await storage.close()


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path) as h:
        yield h
