"""Hostile clients against the web console's lane of a real hub: garbage, oversized
bodies, too many connections from one address, a client that never finishes its
headers (slowloris). Each time the hub stays up and serves the next client."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Iterator

import pytest
from helpers import Cluster, free_port
from webkit import WebClient, web_context

PER_ADDR = 64  # ListenerLimits.max_web_connections_per_addr
HEADER_TIMEOUT = 10.0  # ListenerLimits.web_header_timeout


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("webhostile"), free_port())
    c.start_hub()
    try:
        yield c
    finally:
        c.stop()


def _tls(hub: Cluster) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", hub.hub_port), timeout=20)
    return web_context(hub).wrap_socket(raw, server_hostname="localhost")


def _healthy(hub: Cluster) -> bool:
    return WebClient(hub).request("GET", "/healthz").status == 200


def _closed(sock: ssl.SSLSocket, within: float) -> bool:
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except (ssl.SSLError, OSError):
        return True
    return True


def test_garbage_and_oversized_bodies_get_an_error_and_the_hub_stays(hub: Cluster) -> None:
    with _tls(hub) as sock:
        sock.sendall(os.urandom(4096) + b"\r\n\r\n")
        reply = sock.recv(4096)
        assert reply.split(b"\r\n")[0].endswith(b"400 Bad Request") or reply == b""
    big = WebClient(hub).request(
        "POST", "/web/api/login", {"user": "x" * (300 * 1024), "password": "p", "otp": "1"}
    )
    assert big.status == 413
    assert _healthy(hub)


def test_one_address_holds_a_bounded_number_of_connections(hub: Cluster) -> None:
    held = [_tls(hub) for _ in range(PER_ADDR)]
    try:
        extra = socket.create_connection(("127.0.0.1", hub.hub_port), timeout=20)
        try:
            with pytest.raises((ssl.SSLError, OSError)):
                web_context(hub).wrap_socket(extra, server_hostname="localhost").recv(1)
        finally:
            extra.close()
    finally:
        for sock in held:
            sock.close()
    deadline = time.time() + 10
    while time.time() < deadline and not _healthy(hub):
        time.sleep(0.2)  # the hub counts the closed ones down as they go
    assert _healthy(hub)


def test_a_client_that_never_finishes_its_headers_is_cut(hub: Cluster) -> None:
    with _tls(hub) as sock:
        sock.sendall(b"GET /web/ HTTP/1.1\r\nHost: localhost\r\n")
        start = time.monotonic()
        cut = False
        while time.monotonic() - start < HEADER_TIMEOUT + 10 and not cut:
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # a header line every second, never the end
            except OSError:
                cut = True
                break
            cut = _closed(sock, 1.0)
        assert cut, "the hub kept a connection that never finished its headers"
        assert time.monotonic() - start < HEADER_TIMEOUT + 5
    assert _healthy(hub)
