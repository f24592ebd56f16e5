"""The shared TLS read buffer: many concurrent TLS connections, no bytes crossed.

Runs in a child interpreter because the patch is process-wide.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import asyncio, hashlib, os, ssl, sys
    from asyncio import sslproto
    from hub.datadir import DataDir
    from hub.net.sslbuffer import share_ssl_read_buffer
    from remoteler.tlsutil import client_context, server_context
    from pathlib import Path

    assert share_ssl_read_buffer()
    data = DataDir(Path(sys.argv[1]))
    data.init("t")
    host_ca = data.load_ca("host")
    cert, key = data.issue_server_identity(host_ca, ["127.0.0.1"])
    sctx = server_context(cert, key, [host_ca.x509_pem])
    protocols = []

    async def echo(reader, writer):
        protocols.append(writer.transport._ssl_protocol)
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.close()

    async def client(port, seed):
        payload = hashlib.sha256(seed).digest() * (1 << 15)  # 1 MiB, distinct per client
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(host_ca.x509_pem), server_hostname="x"
        )
        async def send():
            for i in range(0, len(payload), 50_000):
                writer.write(payload[i : i + 50_000])
                await writer.drain()
            writer.write_eof() if writer.can_write_eof() else None
        sender = asyncio.ensure_future(send())
        got = await reader.readexactly(len(payload))
        await sender
        writer.close()
        return got == payload

    async def main():
        server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=sctx)
        port = server.sockets[0].getsockname()[1]
        results = await asyncio.gather(*(client(port, bytes([i])) for i in range(24)))
        server.close()
        assert all(results), results
        buffers = {id(p._ssl_buffer) for p in protocols}
        assert len(protocols) == 24 and len(buffers) == 1, (len(protocols), len(buffers))
        assert len(protocols[0]._ssl_buffer) == 256 * 1024
        print("ok")

    asyncio.run(main())
    """
)


def test_shared_buffer_keeps_every_connections_bytes_apart(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "hub")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.strip() == "ok", proc.stderr[-3000:]
