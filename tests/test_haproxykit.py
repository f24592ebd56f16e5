"""tests/haproxykit.py: HAProxy in TCP passthrough in front of real loopback servers.

The backends are tiny asyncio servers that answer each connection with their own
name and then echo; the kit's blocking calls run in a thread so they keep serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import haproxykit
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from haproxykit import HAProxy, HAProxyError
from pgkit import alive

from remoteler.ca import x509 as cax509


class NamedServers:
    """Loopback TCP servers that send their name and a newline, then echo."""

    def __init__(self) -> None:
        self.servers: dict[str, asyncio.Server] = {}
        self.ports: dict[str, int] = {}
        self.ssl: ssl.SSLContext | None = None
        self.writers: dict[str, set[asyncio.StreamWriter]] = {}

    async def start(self, name: str, port: int = 0) -> str:
        """Start (or restart, on its old port) server ``name``; its "HOST:PORT"."""
        server = await asyncio.start_server(
            lambda r, w: self._serve(name, r, w),
            "127.0.0.1",
            port or self.ports.get(name, 0),
            ssl=self.ssl,
        )
        self.servers[name] = server
        self.ports[name] = server.sockets[0].getsockname()[1]
        return self.addr(name)

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    async def stop(self, name: str) -> None:
        """Stop listening (new connects are refused) and drop its connections."""
        server = self.servers.pop(name)
        server.close()
        for writer in self.writers.pop(name, set()):
            writer.close()
        await server.wait_closed()

    async def close(self) -> None:
        for name in list(self.servers):
            await self.stop(name)

    async def _serve(
        self, name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.writers.setdefault(name, set()).add(writer)
        try:
            greeting = name
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is not None:  # say which client certificate arrived here
                der = ssl_object.getpeercert(binary_form=True) or b""
                greeting += " " + hashlib.sha256(der).hexdigest()
            writer.write(greeting.encode() + b"\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.writers.get(name, set()).discard(writer)
            writer.close()


@pytest.fixture
async def named() -> AsyncIterator[NamedServers]:
    servers = NamedServers()
    try:
        yield servers
    finally:
        await servers.close()


@pytest.fixture
async def three(named: NamedServers) -> AsyncIterator[tuple[NamedServers, HAProxy]]:
    backends = [await named.start(name) for name in ("a", "b", "c")]
    lb = await asyncio.to_thread(HAProxy.start, backends)
    try:
        yield named, lb
    finally:
        await asyncio.to_thread(lb.stop)


async def dial(addr: str) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to ``addr``; the name the backend answers with, and the open streams."""
    host, port = addr.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    line = await asyncio.wait_for(reader.readline(), 5)
    return line.decode().strip(), reader, writer


async def name_at(addr: str) -> str:
    """Connect, read the backend's name, close; "" if the connection died first."""
    name, _, writer = await dial(addr)
    writer.close()
    return name


def test_the_config_is_tcp_passthrough_round_robin_with_fast_checks() -> None:
    text = haproxykit.render_config(["127.0.0.1:4001", "hub.example:4002"], 5000)
    for line in (
        "mode tcp",
        "balance roundrobin",
        "bind 127.0.0.1:5000",
        "default-server check inter 300ms fall 1 rise 2",
        "retries 3",
        "option redispatch",
        "timeout connect 2s",
        "timeout tunnel 1h",
        "log stdout format raw local0",
        "server hub0 127.0.0.1:4001",
        "server hub1 hub.example:4002",
    ):
        assert f"    {line}\n" in text
    for absent in ("ssl", "chroot", "user ", "daemon", "/dev/log"):
        assert absent not in text
    for bad in ("127.0.0.1", "127.0.0.1:", ":80", "h:0", "h:65536", "h:http"):
        with pytest.raises(ValueError, match="is not HOST:PORT"):
            haproxykit.render_config([bad], 5000)


async def test_connections_spread_round_robin_over_every_backend(
    three: tuple[NamedServers, HAProxy],
) -> None:
    _, lb = three
    names = [await name_at(lb.addr) for _ in range(30)]
    assert Counter(names) == {"a": 10, "b": 10, "c": 10}
    assert names[:3] == sorted(names[:3])  # hub0, hub1, hub2 in turn
    states = await asyncio.to_thread(lb.server_states)
    assert states == {three[0].addr(name): "UP" for name in ("a", "b", "c")}


async def test_a_stopped_backend_leaves_the_rotation_and_no_connect_fails(
    three: tuple[NamedServers, HAProxy],
) -> None:
    named, lb = three
    dead = named.addr("b")
    await named.stop("b")
    stopped = time.monotonic()
    seen_down: float | None = None
    results: list[tuple[float, str]] = []
    while time.monotonic() - stopped < 2.0:
        try:
            name = await name_at(lb.addr)
        except (TimeoutError, OSError) as exc:
            name = f"failed: {exc!r}"
        results.append((time.monotonic() - stopped, name))
        if seen_down is None and len(results) % 20 == 0:
            state = (await asyncio.to_thread(lb.server_states))[dead]
            if state == "DOWN":
                seen_down = time.monotonic() - stopped
    failures = [r for r in results if r[1] not in ("a", "c")]
    assert failures == [], lb.log()[-3000:]
    assert len(results) > 100  # the loop really dialled through the check window
    assert seen_down is not None and seen_down < 1.5  # checks every 300 ms, fall 1
    assert {name for at, name in results if at > seen_down} == {"a", "c"}
    assert "Server hubs/hub1 is DOWN" in lb.log()


async def test_retries_and_redispatch_hide_a_refused_connect(
    three: tuple[NamedServers, HAProxy],
) -> None:
    named, lb = three
    # Keep the dead backend in the rotation (no checks), so that every third
    # connect is refused by it and must be redispatched: deterministic, where the
    # window between the backend's death and the next check is up to 300 ms.
    answer = await asyncio.to_thread(lb.command, "disable health hubs/hub1")
    assert answer.strip() == ""
    await named.stop("b")
    took = []
    names = []
    for _ in range(30):
        began = time.monotonic()
        names.append(await name_at(lb.addr))
        took.append(time.monotonic() - began)
    assert set(names) == {"a", "c"}
    redispatched = [line for line in lb.log().splitlines() if "/+1 " in line]
    assert len(redispatched) >= 10, lb.log()[-3000:]
    # The retry goes to another hub at once (no 1 s turn-around as for a retry on
    # the same server): a refusal costs the client nothing it can see.
    assert max(took) < 0.5


async def test_a_backend_restarted_on_its_port_rejoins_with_no_change(
    three: tuple[NamedServers, HAProxy],
) -> None:
    named, lb = three
    port = named.ports["b"]
    await named.stop("b")
    await wait_state(lb, named.addr("b"), "DOWN")
    await named.start("b", port)
    await wait_state(lb, named.addr("b"), "UP", timeout=3.0)  # rise 2: ~600 ms
    names = {await name_at(lb.addr) for _ in range(6)}
    assert names == {"a", "b", "c"}


async def wait_state(lb: HAProxy, backend: str, state: str, timeout: float = 2.0) -> float:
    began = time.monotonic()
    while (now := await asyncio.to_thread(lb.server_states)).get(backend) != state:
        assert time.monotonic() - began < timeout, f"{backend} still {now.get(backend)}"
        await asyncio.sleep(0.05)
    return time.monotonic() - began


async def test_set_backends_reloads_gracefully_and_stop_leaves_no_process(
    named: NamedServers,
) -> None:
    first = [await named.start("a"), await named.start("b")]
    lb = await asyncio.to_thread(HAProxy.start, first)
    try:
        master = lb.pid
        (old_worker,) = lb.worker_pids()
        held_name, reader, writer = await dial(lb.addr)
        assert held_name == "a"

        await asyncio.to_thread(lb.set_backends, [*first, await named.start("c")])
        assert lb.pid == master  # reloaded in place
        workers = lb.worker_pids()
        assert old_worker in workers and len(workers) == 2  # the old one drains
        names = Counter([await name_at(lb.addr) for _ in range(9)])
        assert names == {"a": 3, "b": 3, "c": 3}
        writer.write(b"still here")  # the connection opened before the reload lives on
        assert await asyncio.wait_for(reader.readexactly(10), 5) == b"still here"

        with pytest.raises(ValueError, match="is not HOST:PORT"):
            await asyncio.to_thread(lb.set_backends, ["nonsense"])
        assert len(lb.backends) == 3
    finally:
        pids = [lb.pid, *lb.worker_pids()] if lb.proc is not None else []
        await asyncio.to_thread(lb.stop)
    assert pids and not any(alive(pid) for pid in pids)
    assert not lb.root.exists()
    with pytest.raises(ConnectionError):
        await name_at(lb.addr)
    lb.stop()  # twice is fine
    writer.close()


def make_ca() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.generate()
    return key, cax509.make_root(key, "test CA", "haproxykit")


def make_leaf(
    tmp: Path, ca: tuple[Ed25519PrivateKey, bytes], name: str, usage: str
) -> tuple[Path, Path, bytes]:
    key = Ed25519PrivateKey.generate()
    pem = cax509.issue_cert(
        ca[0],
        ca[1],
        key.public_key(),
        common_name=name,
        usage="server" if usage == "server" else "client",
        ip_addresses=["127.0.0.1"] if usage == "server" else (),
        not_after=datetime.now(UTC) + timedelta(hours=1),
    )
    cert, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key_path, cax509.load_certificate(pem).public_bytes(serialization.Encoding.DER)


async def test_tls_passes_through_end_to_end(named: NamedServers, tmp_path: Path) -> None:
    ca = make_ca()
    (tmp_path / "ca.crt").write_bytes(ca[1])
    server_cert, server_key, server_der = make_leaf(tmp_path, ca, "hub-1", "server")
    client_cert, client_key, client_der = make_leaf(tmp_path, ca, "agent-1", "client")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tmp_path / "ca.crt")
    server_ctx.load_cert_chain(server_cert, server_key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    named.ssl = server_ctx
    backend = await named.start("tls-hub")
    client_ctx = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    client_ctx.load_cert_chain(client_cert, client_key)

    with await asyncio.to_thread(HAProxy.start, [backend]) as lb:
        host, port = lb.addr.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=client_ctx, server_hostname="127.0.0.1"
        )
        try:
            # The client verified the backend's own certificate (HAProxy has none)...
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.getpeercert(binary_form=True) == server_der
            # ...and the backend saw the client's certificate: mTLS end to end.
            greeting = (await asyncio.wait_for(reader.readline(), 5)).decode().split()
            assert greeting == ["tls-hub", hashlib.sha256(client_der).hexdigest()]
            writer.write(b"over tls")
            assert await asyncio.wait_for(reader.readexactly(8), 5) == b"over tls"
        finally:
            writer.close()


def test_a_taken_port_fails_with_haproxys_own_words() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HAProxyError, match=r"(?s)exited before starting.*cannot bind"):
            HAProxy.start(["127.0.0.1:1"], port=port)


def test_a_missing_haproxy_fails_with_one_line_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(haproxykit, "find_binary", lambda name: None)
    monkeypatch.setattr(haproxykit, "SBIN_PATH", "/nonexistent/haproxy")
    with pytest.raises(pytest.fail.Exception) as failed:
        HAProxy.start(["127.0.0.1:1"])
    assert str(failed.value) == (
        "haproxy is not installed: apt-get install haproxy (.ci/run installs it)"
    )
