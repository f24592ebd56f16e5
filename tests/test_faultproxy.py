"""The fault proxy itself, against a local echo server. Timings are asserted with wide margins."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from faultproxy import FaultProxy


class EchoServer:
    """A threaded TCP echo server on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # shutdown wakes the blocked accept() on Linux
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.thread.join(timeout=5)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", echo.port) as p:
        yield p


def connect(proxy: FaultProxy, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        data = sock.recv(n - len(out))
        if not data:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += data
    return bytes(out)


def rtt(sock: socket.socket, payload: bytes = b"ping") -> float:
    start = time.monotonic()
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    return time.monotonic() - start


def test_forwards_and_counts(proxy: FaultProxy) -> None:
    assert proxy.addr == f"127.0.0.1:{proxy.port}" and proxy.port > 0
    with connect(proxy) as sock:
        for i in range(20):
            msg = f"message {i}".encode()
            sock.sendall(msg)
            assert recv_exactly(sock, len(msg)) == msg
        stats = proxy.stats
    assert stats.accepted == 1
    assert stats.bytes_up == stats.bytes_down == sum(len(f"message {i}") for i in range(20))


def test_delay_adds_latency_each_way_and_keeps_order(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        base = rtt(sock)
        proxy.delay(0.2)
        assert rtt(sock) >= 0.35  # 2 x 200 ms, existing connection
        # many small writes in a row arrive in order
        chunks = [f"<{i}>".encode() for i in range(50)]
        for chunk in chunks:
            sock.sendall(chunk)
        assert recv_exactly(sock, sum(map(len, chunks))) == b"".join(chunks)
    with connect(proxy) as sock:  # and new connections
        assert rtt(sock) >= 0.35
        proxy.clear()
        assert rtt(sock) < 0.35 + base


def test_bandwidth_cap_limits_throughput(proxy: FaultProxy) -> None:
    payload = b"x" * 100_000
    with connect(proxy, timeout=20) as sock:
        fast = rtt(sock, payload)
        proxy.bandwidth(100_000)  # 100 kB/s each way: ~1 s for 100 kB
        slow = rtt(sock, payload)
        assert slow >= 0.7, slow
        assert slow > 3 * fast
        proxy.bandwidth(None)
        assert rtt(sock, payload) < slow / 2


def test_reset_gives_the_client_a_connection_reset(proxy: FaultProxy) -> None:
    with connect(proxy) as a, connect(proxy) as b:
        rtt(a)
        rtt(b)
        assert proxy.stats.open == 2
        assert proxy.reset() == 2
        for sock in (a, b):
            with pytest.raises(ConnectionResetError):
                sock.sendall(b"after")
                sock.recv(10)
    assert proxy.stats.resets == 2
    with connect(proxy) as sock:  # a reset is a one-off: new connections work
        assert rtt(sock) < 5


def test_blackhole_keeps_the_connection_open_and_drops_bytes(proxy: FaultProxy) -> None:
    with connect(proxy) as old:
        rtt(old)
        proxy.blackhole(True)
        old.settimeout(0.5)
        old.sendall(b"lost")
        with pytest.raises(TimeoutError):  # no answer, but no reset or EOF either
            old.recv(10)
        with connect(proxy) as new:  # new connections are black-holed too
            new.settimeout(0.5)
            new.sendall(b"lost too")
            with pytest.raises(TimeoutError):
                new.recv(10)
            assert proxy.stats.open == 2
            assert proxy.stats.dropped >= len(b"lostlost too")
            proxy.clear()
            new.settimeout(5)
            old.settimeout(5)
            # the dropped bytes stay lost; the connections are open and forward again
            assert rtt(new, b"back") < 5
            assert rtt(old, b"again") < 5
        with connect(proxy) as fresh:
            assert rtt(fresh) < 5


def test_blackhole_swallows_the_fin(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        rtt(sock)
        proxy.blackhole(True)
        sock.shutdown(socket.SHUT_WR)  # the echo server would close in turn; it never hears
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        proxy.blackhole(False)
        with pytest.raises(TimeoutError):
            sock.recv(10)


def test_stop_closes_every_socket(echo: EchoServer) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port).start()
    sock = connect(proxy)
    rtt(sock)
    proxy.blackhole(True)
    proxy.stop()
    sock.settimeout(5)
    with pytest.raises((ConnectionResetError, EOFError)):
        if not sock.recv(10):
            raise EOFError
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5)


def test_only_loopback_targets() -> None:
    with pytest.raises(ValueError):
        FaultProxy("10.0.0.1", 22)


async def test_usable_inside_an_async_test(echo: EchoServer) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        proxy.delay(0.2)
        start = time.monotonic()
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 10) == b"hello"
        assert time.monotonic() - start >= 0.35
        proxy.reset()
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            writer.write(b"x")
            await asyncio.wait_for(reader.readexactly(1), 10)
        writer.close()
