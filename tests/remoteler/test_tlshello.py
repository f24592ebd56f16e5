"""ClientHello peeking on real OpenSSL ClientHellos (made with ssl.MemoryBIO), and fuzz."""

from __future__ import annotations

import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remoteler.protocol import TUNNEL_ALPN
from remoteler.tlshello import MAX_HELLO, ClientHello, NotClientHello, parse_client_hello
from remoteler.tlsutil import client_context


def real_hello(alpn: list[str] | None = None, sni: str | None = "remoteler-hub") -> bytes:
    """The bytes OpenSSL sends first, as a client with these settings."""
    ctx = client_context(None, alpn=alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_agent_hello_carries_the_tunnel_alpn() -> None:
    hello = parse_client_hello(real_hello([TUNNEL_ALPN]))
    assert hello == ClientHello((TUNNEL_ALPN,), "remoteler-hub")


def test_user_hello_has_no_alpn() -> None:
    assert parse_client_hello(real_hello()) == ClientHello((), "remoteler-hub")


def test_several_protocols_and_no_sni() -> None:
    hello = parse_client_hello(real_hello(["h2", "http/1.1"], sni=None))
    assert hello == ClientHello(("h2", "http/1.1"), None)


def test_every_prefix_asks_for_more() -> None:
    data = real_hello([TUNNEL_ALPN])
    for n in range(len(data)):
        assert parse_client_hello(data[:n]) is None
    assert parse_client_hello(data + b"trailing bytes") is not None


def test_hello_split_over_two_records() -> None:
    data = real_hello([TUNNEL_ALPN])
    body = data[5:]
    half = len(body) // 2
    split = (
        b"\x16\x03\x01"
        + half.to_bytes(2, "big")
        + body[:half]
        + b"\x16\x03\x01"
        + (len(body) - half).to_bytes(2, "big")
        + body[half:]
    )
    assert parse_client_hello(split[: len(split) - 1]) is None
    assert parse_client_hello(split) == parse_client_hello(data)


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x16\x02\x00\x00\x10",  # not TLS 3.x
        b"\x17\x03\x03\x00\x10" + bytes(16),  # application data first
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # ServerHello, not ClientHello
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",  # claims 16 MiB
        b"\x16\x03\x01\xff\xff",  # record beyond MAX_HELLO
    ],
)
def test_not_a_client_hello(data: bytes) -> None:
    with pytest.raises(NotClientHello):
        parse_client_hello(data)


def test_truncated_inside_a_complete_message_is_refused() -> None:
    # A complete handshake message whose inner vectors run past its end.
    body = b"\x03\x03" + bytes(32) + b"\x20"  # session id length 32, missing
    msg = b"\x01" + len(body).to_bytes(3, "big") + body
    with pytest.raises(NotClientHello):
        parse_client_hello(b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=MAX_HELLO + 64))
def test_fuzz_only_none_hello_or_not_client_hello(data: bytes) -> None:
    try:
        result = parse_client_hello(data)
    except NotClientHello:
        return
    assert result is None or isinstance(result, ClientHello)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_real_hellos(data: st.DataObject) -> None:
    hello = bytearray(real_hello([TUNNEL_ALPN]))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(hello) - 1))
        hello[i] = data.draw(st.integers(0, 255))
    try:
        result = parse_client_hello(bytes(hello))
    except NotClientHello:
        return
    assert result is None or isinstance(result, ClientHello)
