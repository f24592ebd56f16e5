"""TLS contexts for the hub's single port (mTLS with the two CA roots)."""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

#: ALPN an agent offers on its tunnel connection, so the hub can queue agents
#: apart from users before the handshake (hub/listener.py). Not authentication.
TUNNEL_ALPN = "remoteler-tunnel/1"


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # ssl only loads key material from files: use a private temp dir, removed at once.
    with tempfile.TemporaryDirectory(prefix="remoteler-tls-") as tmp:
        cert_path = Path(tmp) / "cert.pem"
        key_path = Path(tmp) / "key.pem"
        cert_path.write_bytes(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key_pem)
        ctx.load_cert_chain(str(cert_path), str(key_path))


def server_context(cert_pem: bytes, key_pem: bytes, client_ca_pems: list[bytes]) -> ssl.SSLContext:
    """Hub context: client certificates optional (login needs none), from either CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, cert_pem, key_pem)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    # asyncio clients cannot resume sessions, so tickets are pure cost: about
    # 0.7 ms of each handshake with OpenSSL 3.0 (bench/scale.py, reconnect storms).
    ctx.num_tickets = 0
    ctx.load_verify_locations(cadata=b"".join(client_ca_pems).decode())
    return ctx


def client_context(
    ca_pem: bytes | None,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    """Client context verifying the hub against ``ca_pem``.

    ``ca_pem=None`` gives an unverified context: use it only to fetch the CA
    before checking it against a pin, and send nothing secret over it.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_pem is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        # The CA is pinned and private to this cluster; it only issues the hub's
        # serverAuth certificate, so the chain check is what matters. Hub
        # addresses are often bare IPs or NAT names, so hostnames are not checked.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=ca_pem.decode())
    if cert_pem is not None and key_pem is not None:
        _load_chain(ctx, cert_pem, key_pem)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx
