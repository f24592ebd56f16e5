"""A real HubServer on loopback (TLS, websockets) against hostile and broken clients.

Every test ends by checking the hub still answers a fresh ``ping``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import Any

import msgpack
import pytest
from hubkit import Hub, new_key_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from hub.auth import secrets as hs
from remoteler import rpc
from remoteler.ca import CertAuthority, public_key_from_openssh
from remoteler.hubconn import ERROR_HEADER
from remoteler.protocol import CONNECT_SUBPROTOCOL, TUNNEL_SUBPROTOCOL
from remoteler.wire.codes import FrameType

FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _open(hub: Hub, path: str, ctx: Any = None, subprotocol: str = rpc.SUBPROTOCOL) -> Any:
    return connect(
        hub.url(path),
        ssl=ctx or hub.tls(),
        compression=None,
        subprotocols=[subprotocol],  # type: ignore[list-item]
        open_timeout=5,
        close_timeout=1,
    )


async def ping(hub: Hub, ctx: Any = None) -> None:
    """A fresh connection's ping RPC answers: the hub is alive and serving."""
    async with _open(hub, "/v1/rpc", ctx) as ws:
        result = await asyncio.wait_for(rpc.RpcClient(ws).call("ping"), 5)
    assert result["cluster"] == "test"
    assert result["host_ca_pem"] == hub.auth.host_ca.x509_pem.decode()


async def _refused(hub: Hub, path: str, ctx: Any, subprotocol: str) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as exc:
        async with _open(hub, path, ctx, subprotocol):
            pass
    return exc.value


async def _raw_call(ws: ClientConnection, message: Any) -> dict[str, Any]:
    await ws.send(message)
    return rpc.decode(await asyncio.wait_for(ws.recv(), 5))


# handshake: who may open which endpoint --------------------------------------


async def test_tunnel_without_client_cert_is_401(hub: Hub) -> None:
    err = await _refused(hub, "/v1/tunnel", None, TUNNEL_SUBPROTOCOL)
    assert err.response.status_code == 401
    assert err.response.headers[ERROR_HEADER] == "auth"
    assert b"node certificate" in err.response.body
    await ping(hub)


async def test_tunnel_with_user_cert_is_401(hub: Hub) -> None:
    ctx = hub.tls(*await hub.user_creds())
    err = await _refused(hub, "/v1/tunnel", ctx, TUNNEL_SUBPROTOCOL)
    assert err.response.status_code == 401
    assert err.response.headers[ERROR_HEADER] == "auth"
    await ping(hub, ctx)


async def test_tunnel_of_removed_node_is_401(hub: Hub) -> None:
    ctx = hub.tls(*await hub.node_creds("gone"))
    assert await hub.storage.nodes.delete("gone")
    err = await _refused(hub, "/v1/tunnel", ctx, TUNNEL_SUBPROTOCOL)
    assert err.response.status_code == 401
    assert b"join again" in err.response.body


async def test_connect_with_node_cert_is_401(hub: Hub) -> None:
    ctx = hub.tls(*await hub.node_creds())
    err = await _refused(hub, "/v1/connect?node=node-1&login=pi", ctx, CONNECT_SUBPROTOCOL)
    assert err.response.status_code == 401
    assert err.response.headers[ERROR_HEADER] == "auth"
    await ping(hub, ctx)


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("?node=node-1&login=pi", 404, "node"),  # known but offline
        ("?node=nowhere&login=pi", 404, "node"),
        ("?node=node-1", 400, "usage"),
        ("?node=node-1&login=root", 403, "access_denied"),
        ("?node=%00%ff&login=%0a", 404, "node"),
    ],
)
async def test_connect_refusals_for_a_user(hub: Hub, query: str, status: int, code: str) -> None:
    await hub.node_creds()
    ctx = hub.tls(*await hub.user_creds())
    err = await _refused(hub, "/v1/connect" + query, ctx, CONNECT_SUBPROTOCOL)
    assert (err.response.status_code, err.response.headers[ERROR_HEADER]) == (status, code)


@pytest.mark.parametrize("path", ["/", "/v1/nope", "/v1/rpc/", "/V1/RPC", "/v1/tunnel/../rpc"])
async def test_unknown_path_is_404(hub: Hub, path: str) -> None:
    err = await _refused(hub, path, None, rpc.SUBPROTOCOL)
    assert err.response.status_code == 404
    assert err.response.headers[ERROR_HEADER] == "usage"


async def test_cert_from_another_cluster_is_refused_in_tls(hub: Hub) -> None:
    foreign = CertAuthority.generate("user", "elsewhere")
    key_pem, pub = new_key_line()
    cert = foreign.issue_x509(
        public_key_from_openssh(pub),
        common_name="alice",
        organization="remoteler-user",
        usage="client",
        ttl_seconds=600,
    )
    with pytest.raises((OSError, InvalidHandshake, ConnectionClosed)):
        async with _open(hub, "/v1/rpc", hub.tls(cert, key_pem)) as ws:
            await rpc.RpcClient(ws).call("ping")
    await ping(hub)


# /v1/rpc: broken and hostile messages ------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "a text message",
        b"",
        b"\xc1\xff\x00garbage",
        msgpack.packb([1, "ping", {}]),
        msgpack.packb("ping"),
        msgpack.packb({"id": "1", "method": "ping"}),
        msgpack.packb({"id": True, "method": "ping"}),
        msgpack.packb({"id": 1, "method": ["ping"]}),
        msgpack.packb({"id": 1, "method": "ping", "params": [1]}),
        msgpack.packb({1: 2}),
        msgpack.packb({"id": 1, "method": "ping"}) + b"trailing",
    ],
)
async def test_malformed_rpc_closes_cleanly(hub: Hub, message: Any) -> None:
    async with _open(hub, "/v1/rpc") as ws:
        await ws.send(message)
        with pytest.raises(ConnectionClosed) as exc:
            await asyncio.wait_for(ws.recv(), 5)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1002
    await ping(hub)


async def test_oversized_rpc_message_closes_with_1009(hub: Hub) -> None:
    async with _open(hub, "/v1/rpc") as ws:
        await ws.send(b"\x00" * (4 << 20))
        with pytest.raises(ConnectionClosed) as exc:
            await asyncio.wait_for(ws.recv(), 5)
    assert exc.value.rcvd is not None and exc.value.rcvd.code == 1009
    await ping(hub)


def _req(method: str, **params: Any) -> bytes:
    return rpc.encode({"id": 7, "method": method, "params": params})


WRONG_PARAMS = [
    _req("nonexistent"),
    _req("x" * 10_000),
    _req("login"),
    _req("login", user=5, password=b"pw", otp=1.5, public_key=None),
    _req("login", user="alice", password="x" * 8, otp="000000", public_key="k", ttl="1h"),
    _req("invite.info", user=["a"], invite={}),
    _req("invite.accept", user="a", invite="b", password="c", otp="d", public_key="e", ttl=-1),
    _req("join"),
    _req("join", token="t", name="n", public_key="k", labels=["env=prod"]),
    _req("join", token="t", name="n", public_key="k", labels={"env": "a,b=c"}),
    _req("join", token="t", name="n", public_key="k", labels={"k": {"nested": 1}}),
    _req("join", token="t", name="../../etc", public_key="k", version=[1]),
    _req("nodes.list"),
    rpc.encode({"id": 2**63, "method": "ping", "params": {}}),
]


async def test_wrong_params_get_typed_errors_not_internal_ones(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    async with _open(hub, "/v1/rpc") as ws:
        for message in WRONG_PARAMS:
            reply = await _raw_call(ws, message)
            assert reply["id"] == rpc.decode(message)["id"]
            if rpc.decode(message)["method"] == "ping":
                continue
            assert set(reply) == {"id", "error"}, reply
            assert reply["error"]["code"] in {"usage", "auth"}, (message[:60], reply)
            assert len(reply["error"]["message"]) < 200
        assert (await _raw_call(ws, _req("ping")))["result"]["cluster"] == "test"
    assert not [r for r in caplog.records if r.getMessage() == "rpc failed"]
    await ping(hub)


async def test_nodes_list_with_bad_label_filter_is_a_usage_error(hub: Hub) -> None:
    await hub.node_creds()
    ctx = hub.tls(*await hub.user_creds())
    async with _open(hub, "/v1/rpc", ctx) as ws:
        client = rpc.RpcClient(ws)
        assert [n["name"] for n in await client.call("nodes.list")] == ["node-1"]
        for bad in (["env"], "env=prod", 5):
            with pytest.raises(Exception, match="labels must be a map") as exc:
                await client.call("nodes.list", labels=bad)
            assert type(exc.value).__name__ == "UsageError"
        assert await client.call("nodes.list", labels={"env": "x"}) == []


HOSTILE_CAPS: list[object] = [
    "resume",  # a string, not a list
    {"resume": True},
    [f"c{i}" for i in range(17)],  # too many
    ["x" * 33],  # too long
    ["resume", "\x1b]52;c;aGk=\x07"],  # an escape sequence for the operator's terminal
    ["resume", 7],
]


async def test_nodes_list_gives_the_agents_caps_and_none_for_hostile_ones(hub: Hub) -> None:
    """``caps`` from a node's heartbeat reach ``nodes.list`` (``tsh ls -v``); a bad list
    counts as none, and the node stays online."""
    node_tls = hub.tls(*await hub.node_creds())
    ctx = hub.tls(*await hub.user_creds())

    def beat(seq: int, status: dict[str, Any]) -> bytes:
        return bytes(msgpack.packb([int(FrameType.PING), seq, status], use_bin_type=True))

    async with (
        _open(hub, "/v1/tunnel", node_tls, TUNNEL_SUBPROTOCOL) as tunnel,
        _open(hub, "/v1/rpc", ctx) as ws,
    ):
        client = rpc.RpcClient(ws)

        async def listed(version: str) -> dict[str, Any]:
            for _ in range(200):  # the hub handles the PING as it arrives: a few ms
                (node,) = await client.call("nodes.list")
                if node["version"] == version:
                    return dict(node)
                await asyncio.sleep(0.02)
            raise AssertionError(f"no heartbeat with version {version} reached nodes.list")

        await tunnel.send(beat(1, {"version": "good", "caps": ["resume", "x.y-z_9"]}))
        assert (await listed("good"))["caps"] == ["resume", "x.y-z_9"]
        for seq, caps in enumerate(HOSTILE_CAPS, start=2):
            await tunnel.send(beat(seq, {"version": f"bad{seq}", "caps": caps}))
            node = await listed(f"bad{seq}")
            assert (node["caps"], node["online"]) == ([], True), caps
        await tunnel.send(beat(99, {"version": "old"}))  # an agent older than capabilities
        assert (await listed("old"))["caps"] == []
    await ping(hub)


async def test_login_flood_does_not_stall_the_hub(hub: Hub) -> None:
    """Argon2 (~0.2 s of CPU each, production cost) runs off the event loop.

    Test and hub share one event loop, so the longest gap between a 10 ms
    ticker's wake-ups is how long the hub stopped serving everyone else.
    """
    start = time.monotonic()
    hs.verify_password(None, "p" * 10)  # what one login costs here, now
    one_verify = time.monotonic() - start
    _, pub = new_key_line()
    login = _req("login", user="nobody", password="p" * 10, otp="123456", public_key=pub)
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with contextlib.AsyncExitStack() as stack:
        attackers = [await stack.enter_async_context(_open(hub, "/v1/rpc")) for _ in range(4)]
        probe = rpc.RpcClient(await stack.enter_async_context(_open(hub, "/v1/rpc")))
        task = asyncio.ensure_future(ticker())
        try:
            for ws in attackers:
                await ws.send(login)
            await probe.call("ping")  # answered while the logins are still being verified
            replies = [rpc.decode(await asyncio.wait_for(ws.recv(), 10)) for ws in attackers]
        finally:
            task.cancel()
    assert all(r["error"]["code"] == "auth" for r in replies)
    # One verify on the loop would stall it for a whole verify; allow a fraction of one.
    limit = max(0.05, 0.6 * one_verify)
    assert len(gaps) > 10 and max(gaps) < limit, f"loop stalled {max(gaps):.3f} s > {limit:.3f} s"


# fuzz: random bytes never take the hub down ------------------------------------


@FUZZ
@given(messages=st.lists(st.binary(max_size=300), min_size=1, max_size=3))
async def test_fuzz_rpc(hub: Hub, messages: list[bytes]) -> None:
    async with _open(hub, "/v1/rpc") as ws:
        for message in messages:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(message)
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                reply = rpc.decode(await asyncio.wait_for(ws.recv(), 0.5))
                assert reply.get("error", {}).get("code") != "error", reply
    await ping(hub)


@pytest.fixture
async def node_tls(hub: Hub) -> ssl.SSLContext:
    return hub.tls(*await hub.node_creds())  # type: ignore[return-value]


@FUZZ
@given(messages=st.lists(st.binary(max_size=300), min_size=1, max_size=3))
async def test_fuzz_tunnel(hub: Hub, node_tls: ssl.SSLContext, messages: list[bytes]) -> None:
    async with _open(hub, "/v1/tunnel", node_tls, TUNNEL_SUBPROTOCOL) as ws:
        for message in messages:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(message)
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                await asyncio.wait_for(ws.recv(), 0.5)
    await ping(hub)


# slow and silent clients ---------------------------------------------------------


async def test_silent_clients_do_not_block_others(hub: Hub) -> None:
    async with contextlib.AsyncExitStack() as stack:
        writers = []
        for _ in range(5):  # TCP only, never a ClientHello
            _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
            writers.append(writer)
        _, writer = await asyncio.open_connection("127.0.0.1", hub.port)
        writer.write(b"\x16\x03\x01\x02\x00\x01")  # half a ClientHello
        writers.append(writer)
        for _ in range(3):  # TLS done, then no HTTP request
            _, writer = await asyncio.open_connection(
                "127.0.0.1", hub.port, ssl=hub.tls(), server_hostname="127.0.0.1"
            )
            writer.write(b"GET /v1/rpc HTTP/1.1\r\nHost: x\r\n")  # headers never end
            writers.append(writer)
        stack.push_async_callback(_close_all, writers)
        idle = await stack.enter_async_context(_open(hub, "/v1/rpc"))  # upgraded, then idle
        assert idle is not None

        start = time.monotonic()
        await asyncio.wait_for(ping(hub), 5)
        assert time.monotonic() - start < 1.0


async def _close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
