"""A hostile websocket client for tests and bench/attack_memory.py: raw frames over TLS.

It opens a websocket by hand (HTTP upgrade, masked frames) so that it can do
what no well-behaved library does: send pings (or tunnel PING frames) as fast
as the hub takes them and never read a byte of what comes back.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import struct
import time
from dataclasses import dataclass

from remoteler.wire.frames import MAX_SEQ, PingFrame, encode_frame

OP_BINARY, OP_PING = 0x2, 0x9


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


def tunnel_ping(seq: int) -> bytes:
    """Our wire protocol's PING frame (no status payload), as one binary message."""
    return encode_frame(PingFrame(seq & MAX_SEQ, None))


@dataclass
class Flood:
    """What a flood sent, and whether the hub cut it off."""

    sent: int = 0
    cut: bool = False
    seconds: float = 0.0


async def open_raw(
    host: str, port: int, path: str, ctx: ssl.SSLContext, subprotocol: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TLS + websocket upgrade by hand; returns the streams after the 101.

    The socket's receive buffer is kept small: a peer that does not read then
    leaves the hub's replies in the hub's buffers, not in its own kernel's.
    """
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except OSError:
        sock.close()
        raise
    reader, writer = await asyncio.open_connection(
        sock=sock, ssl=ctx, server_hostname="remoteler-hub", limit=8192
    )
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {subprotocol}\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    if not head.startswith(b"HTTP/1.1 101"):
        writer.close()
        raise ConnectionError(f"upgrade refused: {head.splitlines()[0]!r}")
    return reader, writer


async def flood(
    writer: asyncio.StreamWriter, frame: bytes, seconds: float, batch: int = 64
) -> Flood:
    """Write ``frame`` over and over for ``seconds``, never reading; stop if cut off."""
    out = Flood()
    start = time.monotonic()
    deadline = time.monotonic() + seconds
    chunk = frame * batch
    try:
        while time.monotonic() < deadline:
            if writer.transport.is_closing():
                out.cut = True
                break
            writer.write(chunk)
            out.sent += batch
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.01)):
                await writer.drain()
            # drain() does not yield while the transport takes everything (a dead
            # TLS transport does): let the loop run its callbacks, the others' too.
            await asyncio.sleep(0)
    except TimeoutError:
        pass  # the hub stopped reading us: fine, the time is up
    except (ConnectionError, OSError, ssl.SSLError):
        out.cut = True
    out.seconds = time.monotonic() - start
    return out


async def tunnel_pings(writer: asyncio.StreamWriter, seconds: float, batch: int = 64) -> Flood:
    """Flood with tunnel PING frames (each its own websocket binary message)."""
    frames = b"".join(ws_frame(OP_BINARY, tunnel_ping(i)) for i in range(batch))
    out = await flood(writer, frames, seconds, batch=1)
    out.sent *= batch  # frames, not writes
    return out


def ws_ping(size: int = 125) -> bytes:
    return ws_frame(OP_PING, os.urandom(size))


def close_quietly(writer: asyncio.StreamWriter) -> None:
    transport = writer.transport
    if not transport.is_closing():
        transport.abort()


def vm_rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
