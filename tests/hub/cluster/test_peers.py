"""Peer links between two hubs, in one process over real TLS websockets on loopback:
mutual TLS with hub certificates, one link per pair, relays spliced end to end with
flow control, a node certificate refused, a dead link noticed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.server import ServerConnection, serve

from hub.api.tunnels import TunnelRegistry
from hub.cluster.directory import HubDirectory
from hub.cluster.identity import PeerIdentity, peer_hub_id
from hub.cluster.peers import PeerLinks
from hub.storage.api import Node
from hub.storage.sqlite import open_sqlite
from remoteler.ca import CertAuthority
from remoteler.errors import RemotelerError
from remoteler.hubconn import open_ws
from remoteler.protocol import PEER_SUBPROTOCOL, SSH_KIND
from remoteler.tlsutil import load_chain
from remoteler.wire.aio import Channel, ChannelRequest, Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.connection import Connection, Role
from remoteler.wire.exceptions import ChannelOpenError
from remoteler.wire.limits import Limits

BLAST = 8 << 20


async def _device(request: ChannelRequest) -> None:
    """The agent end: ``ssh`` channels echo, or hash what they get with ``sink``."""
    if request.kind != SSH_KIND:
        request.reject(OpenFailure.UNKNOWN_KIND, "no")
        return
    channel = request.accept()
    if request.meta.get("mode") == "blast":
        channel.write(b"b" * BLAST)
        channel.write_eof()
        channel.close()
        return
    if request.meta.get("mode") == "sink":
        digest, total = hashlib.sha256(), 0
        while data := await channel.read():
            digest.update(data)
            total += len(data)
        channel.write(f"{total} {digest.hexdigest()}".encode())
        channel.write_eof()
        channel.close()
        return
    while data := await channel.read(65536):
        channel.write(data)
        await channel.drain()
    channel.write_eof()
    channel.close()


@asynccontextmanager
async def agent_tunnel(registry: TunnelRegistry, node: Node) -> AsyncIterator[Tunnel]:
    """A real websocket pair: the hub end registered as the node's tunnel."""
    ready: asyncio.Future[Tunnel] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        tunnel = Tunnel(ws, Connection(Role.LISTENER, Limits()))
        registry.register(node, tunnel)
        ready.set_result(tunnel)
        await tunnel.run()

    from websockets.asyncio.client import connect

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None)
        agent = Tunnel(ws, Connection(Role.DIALER, Limits()), on_channel=_device)
        task = asyncio.ensure_future(agent.run())
        hub_end = await ready
        try:
            yield hub_end
        finally:
            await agent.close()
            await asyncio.gather(task, return_exceptions=True)


class Member:
    def __init__(self, links: PeerLinks, directory: HubDirectory, registry: TunnelRegistry):
        self.links, self.directory, self.registry = links, directory, registry


@asynccontextmanager
async def two_hubs(tmp_path: Path) -> AsyncIterator[tuple[Member, Member, CertAuthority]]:
    host_ca = CertAuthority.generate("host", "test")
    storage = await open_sqlite(tmp_path)
    members: list[Member] = []
    try:
        for hub_id in ("hub-a", "hub-b"):
            registry = TunnelRegistry(storage, hub_id)
            directory = HubDirectory(storage, hub_id, "127.0.0.1:1", "", agents=lambda: 0)
            ident = PeerIdentity.issue(hub_id, host_ca, [host_ca.x509_pem], ["127.0.0.1"])
            links = PeerLinks(hub_id, directory, registry, ident)
            host, port = await links.start("127.0.0.1", 0)
            directory.peer_addr = f"{host}:{port}"
            members.append(Member(links, directory, registry))
        for m in members:
            await m.directory.beat()
        for m in members:
            await m.directory.beat()  # everyone sees everyone
        yield members[0], members[1], host_ca
    finally:
        for m in members:
            await m.links.close()
        await storage.close()


async def test_identity_names_the_hub_and_is_refused_for_nodes() -> None:
    host_ca = CertAuthority.generate("host", "test")
    ident = PeerIdentity.issue("hub-x", host_ca, [host_ca.x509_pem], [])
    der = x509.load_pem_x509_certificate(ident.cert_pem).public_bytes(serialization.Encoding.DER)
    assert peer_hub_id(der) == "hub-x"
    assert peer_hub_id(None) is None and peer_hub_id(b"junk") is None
    assert not ident.due(time.time()) and ident.due(time.time() + 13 * 3600)


async def test_relay_through_a_peer_link_is_end_to_end(tmp_path: Path) -> None:
    async with two_hubs(tmp_path) as (a, b, _ca):
        node = Node(id="n1", name="truck-1")
        async with agent_tunnel(b.registry, node):
            route = await a.links.route_to("n1", ["hub-b"])
            assert route is not None and route.via == "hub-b"
            # echo, then a large upload hashed by the device: every byte once, in order
            channel = await route.open_channel(SSH_KIND, {"session_id": "s1"}, timeout=5)
            channel.write(b"hello")
            assert await channel.read(5) == b"hello"
            channel.write_eof()
            assert await channel.read() == b""
            sink = await route.open_channel(SSH_KIND, {"mode": "sink"}, timeout=5)
            data = os.urandom(8 << 20)
            view = memoryview(data)
            for off in range(0, len(data), 200_000):
                sink.write(view[off : off + 200_000])
                await sink.drain()
            sink.write_eof()
            reply = b""
            while chunk := await sink.read():
                reply += chunk
            assert reply.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"
            # the link is shared: one link per pair, whichever side opened it
            assert a.links.linked() == ["hub-b"] and b.links.linked() == ["hub-a"]
            again = await a.links.route_to("n1", ["hub-b"])
            assert again is not None and again.link is route.link


async def test_relay_to_a_node_not_held_is_refused(tmp_path: Path) -> None:
    async with two_hubs(tmp_path) as (a, _b, _ca):
        route = await a.links.route_to("ghost", ["hub-b"])
        assert route is not None
        with pytest.raises(ChannelOpenError) as err:
            await route.open_channel(SSH_KIND, {}, timeout=2)
        assert err.value.code == OpenFailure.CONNECT_FAILED
        assert await a.links.route_to("ghost", ["hub-zzz", "hub-a"]) is None


async def test_flow_control_holds_across_the_hop(tmp_path: Path) -> None:
    """A user who does not read: the device's writes stall once the windows on both
    hops are full; nothing piles up at the hubs beyond them."""
    async with two_hubs(tmp_path) as (a, b, _ca):
        node = Node(id="n1", name="truck-1")
        async with agent_tunnel(b.registry, node):
            route = await a.links.route_to("n1", ["hub-b"])
            assert route is not None
            channel = await route.open_channel(SSH_KIND, {}, timeout=5)
            # echo device: we write, never read; the echo's writes back stall
            sent = 0
            chunk = b"x" * 65536
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(3):
                    while True:
                        channel.write(chunk)
                        sent += len(chunk)
                        await channel.drain()
            # bounded by the windows of the channels on the path (4 MiB each) and the
            # splice's one chunk, with a margin: not all that we tried to send
            assert sent < 40 << 20


async def test_a_node_certificate_cannot_open_a_peer_link(tmp_path: Path) -> None:
    async with two_hubs(tmp_path) as (a, _b, host_ca):
        key = Ed25519PrivateKey.generate()
        cert = host_ca.issue_x509(
            key.public_key(),
            common_name="hub-b",
            organization="remoteler-node",
            usage="client",
            ttl_seconds=600,
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cadata=host_ca.x509_pem.decode())
        load_chain(ctx, cert, key_pem)
        assert a.links.addr is not None
        with pytest.raises(RemotelerError):
            await open_ws(
                f"127.0.0.1:{a.links.addr[1]}", "/v1/peer", ctx, subprotocol=PEER_SUBPROTOCOL
            )
        assert a.links.linked() == []


async def test_killed_peer_ends_its_relays_and_link(tmp_path: Path) -> None:
    async with two_hubs(tmp_path) as (a, b, _ca):
        node = Node(id="n1", name="truck-1")
        async with agent_tunnel(b.registry, node):
            route = await a.links.route_to("n1", ["hub-b"])
            assert route is not None
            channel: Channel = await route.open_channel(SSH_KIND, {}, timeout=5)
            await b.links.close()  # the holding hub goes away
            async with asyncio.timeout(5):
                assert await channel.read() == b""
            assert route.lost() and not channel.eof_received
            assert a.links.up("hub-b") is None


async def test_garbage_and_certless_clients_on_the_peer_port_change_nothing(
    tmp_path: Path,
) -> None:
    async with two_hubs(tmp_path) as (a, b, _ca):
        assert a.links.addr is not None
        port = a.links.addr[1]
        for junk in (
            os.urandom(4096),
            b"GET /v1/peer HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01" + b"\xff" * 64,
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(junk)
            await writer.drain()
            with contextlib.suppress(ConnectionResetError):
                async with asyncio.timeout(15):
                    await reader.read()  # the hub closes (or resets) it
            writer.close()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with pytest.raises(RemotelerError):  # TLS without a client certificate
            await open_ws(f"127.0.0.1:{port}", "/v1/peer", ctx, subprotocol=PEER_SUBPROTOCOL)
        node = Node(id="n1", name="truck-1")
        async with agent_tunnel(a.registry, node):
            route = await b.links.route_to("n1", ["hub-a"])
            assert route is not None
            channel = await route.open_channel(SSH_KIND, {}, timeout=5)
            channel.write(b"still here")
            assert await channel.read(10) == b"still here"
            channel.close()


async def test_malformed_relay_requests_are_refused(tmp_path: Path) -> None:
    async with two_hubs(tmp_path) as (a, _b, _ca):
        link = await a.links.link("hub-b")
        assert link is not None
        for meta in ({}, {"node": 1, "kind": "ssh", "meta": {}}, {"node": "n", "kind": "ssh"}):
            with pytest.raises(ChannelOpenError) as err:
                await link.open_channel("relay", meta, timeout=5)
            assert err.value.code == OpenFailure.REFUSED
        with pytest.raises(ChannelOpenError) as err:
            await link.open_channel("ssh", {}, timeout=5)
        assert err.value.code == OpenFailure.UNKNOWN_KIND


async def test_a_device_that_writes_then_closes_loses_nothing_across_the_hop(
    tmp_path: Path,
) -> None:
    """The device sends 8 MiB, EOF and closes at once; a user reading slowly still gets
    every byte and the EOF through the peer hop."""
    async with two_hubs(tmp_path) as (a, b, _ca):
        node = Node(id="n1", name="truck-1")
        async with agent_tunnel(b.registry, node):
            route = await a.links.route_to("n1", ["hub-b"])
            assert route is not None
            channel = await route.open_channel(SSH_KIND, {"mode": "blast"}, timeout=5)
            got = 0
            while data := await channel.read(65536):
                got += len(data)
                await asyncio.sleep(0.001)  # slower than the device
            assert got == BLAST and channel.eof_received
