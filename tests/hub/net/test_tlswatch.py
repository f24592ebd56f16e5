"""The reply deadline after the hub's TLS flight, without sockets: a client SSLObject
and the hub's context (wrapped as the listener wraps it) over memory BIOs."""

from __future__ import annotations

import contextlib
import ssl
import sys
import types
from pathlib import Path

from hub.datadir import DataDir
from hub.net import tlswatch
from hub.net.tlswatch import HandshakeDeadline, WatchedContext
from remoteler.tlsutil import client_context, server_context


def test_deadline_moves_to_the_reply_timeout_after_each_flight() -> None:
    d = HandshakeDeadline(started=100.0, reply_timeout=5.0, total_timeout=15.0)
    assert d.deadline() == 115.0 and not d.expired(114.9)
    d.flight_sent(100.01)
    assert d.deadline() == 105.01
    assert not d.expired(105.0) and d.expired(105.01)
    assert d.why() == "no reply to our flight"
    d.flight_sent(112.0)  # after a HelloRetryRequest: never past the total
    assert d.deadline() == 115.0 and d.why() == "timed out" and d.flights == 2
    d.done = True
    assert not d.expired(1000.0)


def _server_ctx(tmp_path: Path) -> ssl.SSLContext:
    data = DataDir(tmp_path / "hub")
    data.init("test")
    host_ca = data.load_ca("host")
    cert, key = data.issue_server_identity(host_ca, ["127.0.0.1"])
    return server_context(cert, key, [host_ca.x509_pem])


def _pump(src: ssl.MemoryBIO, dst: ssl.MemoryBIO) -> None:
    dst.write(src.read())


def test_the_watched_context_reports_our_flight_and_the_end(tmp_path: Path) -> None:
    now = [10.0]
    deadline = HandshakeDeadline(now[0], reply_timeout=5.0, total_timeout=15.0)
    ctx = WatchedContext(_server_ctx(tmp_path), deadline, lambda: now[0])
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_context(None).wrap_bio(c_in, c_out, server_hostname="hub")
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    _pump(c_out, s_in)
    now[0] = 10.5
    with contextlib.suppress(ssl.SSLWantReadError):
        server.do_handshake()
    assert deadline.flights == 1 and deadline.flight_at == 10.5  # our flight went out
    _pump(s_out, c_in)
    client.do_handshake()
    _pump(c_out, s_in)
    now[0] = 11.0
    server.do_handshake()  # the client's answer: done
    assert deadline.done and deadline.flights == 1 and not deadline.expired(99.0)
    assert server.version() == "TLSv1.3"  # the rest passes through to the real object
    server.write(b"hello")
    _pump(s_out, c_in)
    assert client.read(5) == b"hello"


def test_the_data_path_runs_no_code_of_ours(tmp_path: Path) -> None:
    """SSLProtocol keeps the watched object for the connection's life and calls its
    ``read``/``write`` per record: after the handshake that must be the real object's
    methods, not a Python frame of ours around each (it cost ~1 us per record read,
    +24% on a 64-byte record, measured over memory BIOs)."""
    deadline = HandshakeDeadline(0.0, reply_timeout=5.0, total_timeout=15.0)
    ctx = WatchedContext(_server_ctx(tmp_path), deadline, lambda: 0.0)
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_context(None).wrap_bio(c_in, c_out, server_hostname="hub")
    for _ in range(4):  # hello, our flight, the client's answer, done
        for obj in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                obj.do_handshake()
        _pump(c_out, s_in)
        _pump(s_out, c_in)
    assert deadline.done
    client.write(b"ping")
    _pump(c_out, s_in)
    ours: list[str] = []

    def profile(frame: types.FrameType, event: str, _arg: object) -> None:
        if event == "call" and frame.f_code.co_filename == tlswatch.__file__:
            ours.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        assert server.read(1024) == b"ping"
        with contextlib.suppress(ssl.SSLWantReadError):
            server.read(1024)  # nothing more: SSLProtocol's last read of a batch
        server.write(b"pong")
    finally:
        sys.setprofile(None)
    assert ours == []
    _pump(s_out, c_in)
    assert client.read(4) == b"pong"
