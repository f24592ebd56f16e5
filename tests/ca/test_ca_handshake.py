"""End-to-end: real SSH and TLS handshakes on 127.0.0.1 using our certificates."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from remoteler.ca import (
    CertAuthority,
    generate_private_key,
    private_key_to_openssh,
    private_key_to_pkcs8_pem,
)

ROLES = "remoteler-roles@remoteler"


def _user_identity(
    ca: CertAuthority, login: str
) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
    key = generate_private_key()
    line = ca.sign_ssh_user_cert(
        key.public_key(),
        key_id=login,
        principals=[login],
        ttl_seconds=600,
        extensions={"permit-pty": "", ROLES: "admin"},
    )
    return asyncssh.import_private_key(private_key_to_openssh(key)), asyncssh.import_certificate(
        line
    )


async def _handle(process: asyncssh.SSHServerProcess[str]) -> None:
    process.stdout.write(f"hello {process.get_extra_info('username')}\n")
    process.exit(0)


@pytest.fixture
async def ssh_server(user_ca: CertAuthority, host_ca: CertAuthority) -> AsyncIterator[int]:
    """An asyncssh server trusting our user CA and presenting our host certificate."""
    host_key = generate_private_key()
    host_cert = host_ca.sign_ssh_host_cert(
        host_key.public_key(), key_id="node-1", principals=["node-1", "127.0.0.1"]
    )
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[
            (
                asyncssh.import_private_key(private_key_to_openssh(host_key)),
                asyncssh.import_certificate(host_cert),
            )
        ],
        authorized_client_keys=asyncssh.import_authorized_keys(
            f"cert-authority {user_ca.trusted_user_ca_line()}\n"
        ),
        process_factory=_handle,
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def _run(port: int, login: str, identity: object, known_hosts: object) -> str:
    async with asyncssh.connect(
        "127.0.0.1",
        port,
        username=login,
        client_keys=[identity],
        known_hosts=known_hosts,
        agent_path=None,
        config=[],
    ) as conn:
        result = await conn.run("whoami", check=True)
        return str(result.stdout)


async def test_user_cert_authenticates(ssh_server: int, user_ca: CertAuthority) -> None:
    assert (
        await _run(ssh_server, "alice", _user_identity(user_ca, "alice"), None) == "hello alice\n"
    )


async def test_cert_from_other_ca_refused(ssh_server: int) -> None:
    rogue = CertAuthority.generate("user", "example")
    with pytest.raises(asyncssh.PermissionDenied):
        await _run(ssh_server, "alice", _user_identity(rogue, "alice"), None)


async def test_wrong_principal_refused(ssh_server: int, user_ca: CertAuthority) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        await _run(ssh_server, "root", _user_identity(user_ca, "alice"), None)


async def test_host_cert_accepted_via_cert_authority(
    ssh_server: int, user_ca: CertAuthority, host_ca: CertAuthority
) -> None:
    known_hosts = asyncssh.import_known_hosts(host_ca.known_hosts_line() + "\n")
    out = await _run(ssh_server, "alice", _user_identity(user_ca, "alice"), known_hosts)
    assert out == "hello alice\n"


async def test_host_cert_from_other_ca_rejected(ssh_server: int, user_ca: CertAuthority) -> None:
    rogue = CertAuthority.generate("host", "example")
    known_hosts = asyncssh.import_known_hosts(rogue.known_hosts_line() + "\n")
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await _run(ssh_server, "alice", _user_identity(user_ca, "alice"), known_hosts)


# -- mTLS ----------------------------------------------------------------------


def _write_identity(
    directory: Path, name: str, ca: CertAuthority, common_name: str, usage: str
) -> tuple[Path, Path]:
    key = generate_private_key()
    pem = ca.issue_x509(
        key.public_key(),
        common_name=common_name,
        usage=usage,  # type: ignore[arg-type]
        ip_addresses=["127.0.0.1"] if usage == "server" else (),
        ttl_seconds=600,
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(pem)
    key_path.write_bytes(private_key_to_pkcs8_pem(key))
    return cert_path, key_path


async def _tls_exchange(
    tmp_path: Path,
    server_ca: CertAuthority,
    trusted_client_ca: CertAuthority,
    client_issuer: CertAuthority,
) -> tuple[bytes, list[str]]:
    """Serve TLS (cert from ``server_ca``) requiring a client cert from ``trusted_client_ca``.

    The client presents a cert from ``client_issuer``; return the reply and the peer CNs.
    """
    peers: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = writer.get_extra_info("peercert")
        subject = dict(item[0] for item in cert["subject"])
        peers.append(subject["commonName"])
        writer.write(b"hello " + subject["commonName"].encode() + b"\n")
        await writer.drain()
        writer.close()

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*_write_identity(tmp_path, "server", server_ca, "hub", "server"))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cadata=trusted_client_ca.x509_pem.decode())

    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=server_ca.x509_pem.decode())
    client_ctx.load_cert_chain(
        *_write_identity(tmp_path, "client", client_issuer, "alice", "client")
    )

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"
        )
        try:
            return await asyncio.wait_for(reader.readline(), 5), peers
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_mtls_handshake(
    tmp_path: Path, user_ca: CertAuthority, host_ca: CertAuthority
) -> None:
    reply, peers = await _tls_exchange(tmp_path, host_ca, user_ca, user_ca)
    assert reply == b"hello alice\n" and peers == ["alice"]


async def test_mtls_rejects_client_from_other_ca(
    tmp_path: Path, user_ca: CertAuthority, host_ca: CertAuthority
) -> None:
    rogue = CertAuthority.generate("user", "example")
    try:
        reply, peers = await _tls_exchange(tmp_path, host_ca, user_ca, rogue)
    except (ssl.SSLError, ConnectionError):
        reply, peers = b"", []
    assert reply == b"" and peers == []
