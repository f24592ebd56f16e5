"""Read the ALPN and SNI of a TLS ClientHello without terminating TLS (sans-I/O).

The hub peeks at the first bytes of each accepted connection to tell agents
(ALPN ``remoteler-tunnel/1``) from users before spending CPU on a handshake, so
that a fleet reconnecting at once queues behind a limit while ``tsh`` does not.
The peer chooses its own lane: this is scheduling, never authentication.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_HELLO", "ClientHello", "NotClientHello", "parse_client_hello"]

#: Largest ClientHello accepted (records included); OpenSSL's are ~0.5 KiB, PQ ones ~2 KiB.
MAX_HELLO = 16 * 1024

_HANDSHAKE = 0x16
_CLIENT_HELLO = 0x01
_EXT_SNI = 0
_EXT_ALPN = 16


class NotClientHello(ValueError):
    """The bytes are not the start of a TLS ClientHello (or it is too large)."""


@dataclass(frozen=True)
class ClientHello:
    alpn: tuple[str, ...]
    sni: str | None


def parse_client_hello(data: bytes) -> ClientHello | None:
    """Parse the ClientHello at the start of ``data``; None if more bytes are needed."""
    body = _handshake_message(data)
    if body is None:
        return None
    return _parse_body(body)


def _handshake_message(data: bytes) -> bytes | None:
    """Join handshake records until the whole first handshake message is present."""
    fragments = bytearray()
    pos = 0
    while True:
        if len(data) - pos < 5:
            return None
        if data[pos] != _HANDSHAKE or data[pos + 1] != 3:
            raise NotClientHello("not a TLS handshake record")
        length = int.from_bytes(data[pos + 3 : pos + 5], "big")
        if length == 0 or pos + 5 + length > MAX_HELLO:
            raise NotClientHello("ClientHello record too large or empty")
        if len(data) - pos - 5 < length:
            return None
        fragments += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        if len(fragments) >= 4:
            if fragments[0] != _CLIENT_HELLO:
                raise NotClientHello("first handshake message is not a ClientHello")
            size = int.from_bytes(fragments[1:4], "big")
            if size + 4 > MAX_HELLO:
                raise NotClientHello("ClientHello too large")
            if len(fragments) >= size + 4:
                return bytes(fragments[4 : 4 + size])


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise NotClientHello("truncated ClientHello")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vector(self, len_bytes: int) -> bytes:
        return self.take(self.uint(len_bytes))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _parse_body(body: bytes) -> ClientHello:
    r = _Reader(body)
    r.take(2 + 32)  # legacy_version, random
    r.vector(1)  # legacy_session_id
    r.vector(2)  # cipher_suites
    r.vector(1)  # legacy_compression_methods
    alpn: tuple[str, ...] = ()
    sni: str | None = None
    if r.left == 0:
        return ClientHello(alpn, sni)  # no extensions at all (old clients)
    ext = _Reader(r.vector(2))
    while ext.left:
        ext_type = ext.uint(2)
        ext_data = _Reader(ext.vector(2))
        if ext_type == _EXT_ALPN:
            names = _Reader(ext_data.vector(2))
            protos = []
            while names.left:
                protos.append(names.vector(1).decode("ascii", "replace"))
            alpn = tuple(protos)
        elif ext_type == _EXT_SNI:
            names = _Reader(ext_data.vector(2))
            while names.left:
                kind = names.uint(1)
                name = names.vector(2)
                if kind == 0:
                    sni = name.decode("ascii", "replace")
    return ClientHello(alpn, sni)
