"""The hub-certificate check at hub-corrected time (edge_agent/clockdial.py), with
real certificates from the CA module; the dial itself runs in
tests/e2e/test_clock_skew.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from edge_agent.agent import EdgeAgent
from edge_agent.clockdial import check_hub_cert, skew_from_ping
from edge_agent.join import join
from hub.api.server import HubServer
from hub.auth.service import AuthService
from hub.datadir import DataDir
from hub.storage.sqlite import open_sqlite
from remoteler.ca import CAError, CertAuthority, generate_private_key, pin_of_cert_pem
from remoteler.errors import TrustError
from remoteler.tlsutil import server_context

#: "Now" for the checks: set when the module's CA is made, not at import (collection may
#: come long before the tests run, and the CA is valid only from 5 minutes before it).
NOW = int(time.time())


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def host_ca() -> CertAuthority:
    global NOW
    NOW = int(time.time())
    return CertAuthority.generate("host", "example")  # valid from 5 minutes ago


def _hub_cert(ca: CertAuthority, usage: str = "server", ttl: int = 3600) -> bytes:
    key = generate_private_key()
    pem = ca.issue_x509(
        key.public_key(),
        common_name="remoteler-hub",
        usage=usage,  # type: ignore[arg-type]
        ttl_seconds=ttl,
        now=NOW,
    )
    return _der(pem)


def test_a_fresh_ca_is_accepted_at_hub_time_not_at_a_late_device_time(
    host_ca: CertAuthority,
) -> None:
    der = _hub_cert(host_ca)
    check_hub_cert(der, host_ca.x509_pem, NOW)  # hub-corrected: fine
    with pytest.raises(CAError, match="CA is not valid"):  # the device's own clock, 20 min late
        check_hub_cert(der, host_ca.x509_pem, NOW - 1200)


def test_expired_at_hub_time_is_refused(host_ca: CertAuthority) -> None:
    der = _hub_cert(host_ca, ttl=60)
    with pytest.raises(CAError, match="certificate is not valid"):
        check_hub_cert(der, host_ca.x509_pem, NOW + 3600)


def test_another_ca_or_a_node_certificate_is_refused(host_ca: CertAuthority) -> None:
    other = CertAuthority.generate("host", "example")
    with pytest.raises(CAError, match="not signed by the trusted CA"):
        check_hub_cert(_hub_cert(other), host_ca.x509_pem, NOW)
    # A node's client certificate from the same CA cannot pose as the hub.
    with pytest.raises(CAError, match="serverAuth"):
        check_hub_cert(_hub_cert(host_ca, usage="client"), host_ca.x509_pem, NOW)
    with pytest.raises(CAError, match="unreadable"):
        check_hub_cert(b"\x30\x03junk", host_ca.x509_pem, NOW)


def test_either_ca_of_a_rotation_bundle(host_ca: CertAuthority) -> None:
    new = CertAuthority.generate("host", "example")
    check_hub_cert(_hub_cert(new), host_ca.x509_pem + new.x509_pem, NOW)


async def test_the_unverified_pings_time_is_never_taken_only_the_tunnels(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A man in the middle can answer the fallback's unverified ``ping`` with any
    time. It may steer which hub certificate is accepted (within the bound, the
    documented price), but the device's clock correction, its audit times and its
    ``clock.skew`` report come only from the verified tunnel's PONGs.

    A real hub whose certificate starts in 30 minutes (OpenSSL refuses it on the
    right clock), its ping made to lie by an hour: the join and the tunnel go
    through the fallback, and the skew the agent takes is the tunnel's (about 0).
    """
    data = DataDir(tmp_path / "hubdata")
    cluster = data.init("test")
    user_ca, host_ca = data.load_ca("user"), data.load_ca("host")
    key = generate_private_key()
    cert = host_ca.issue_x509(
        key.public_key(),
        common_name="remoteler-hub",
        usage="server",
        ip_addresses=["127.0.0.1"],
        ttl_seconds=86400,
        now=int(time.time()) + 1800,
    )
    key_pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    storage = await open_sqlite(data.path)
    server = HubServer(AuthService(storage, user_ca, host_ca, cluster), storage)
    truthful = server.rpc_ping

    async def lying_ping(ident: Any, params: dict[str, Any]) -> Any:
        return {**await truthful(ident, params), "time": time.time() + 3600}

    server.methods["ping"] = lying_ping  # the man in the middle
    _, port = await server.start(
        "127.0.0.1", 0, server_context(cert, key_pem, [user_ca.x509_pem, host_ca.x509_pem])
    )
    task = None
    try:
        token, _ = await server.auth.add_token("node", 600, {})
        hub = f"127.0.0.1:{port}"
        ident = await join(hub, token, pin_of_cert_pem(host_ca.x509_pem), "dev", {}, "test")
        agent = EdgeAgent(ident, {})
        task = asyncio.ensure_future(agent.run_once())
        for _ in range(600):  # the first PONG answers within a round trip (30 s: a loaded CI)
            if agent.clock.skew is not None and not agent.connect_pending():
                break
            await asyncio.sleep(0.05)
        assert agent.tunnel is not None and agent.clock.skew is not None
        assert abs(agent.clock.skew) < 60  # the tunnel's word, not the ping's hour
        assert "clock skew" not in caplog.text  # and no clock.skew was reported
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await server.close()
        await storage.close()


@pytest.mark.parametrize("junk", [True, "1797000000", None, float("nan"), -1e300, 2**64 - 1])
def test_the_pings_time_is_junk_then_the_first_error_stands(junk: object) -> None:
    """The unverified ping's time is anyone's: junk is no skew, never a crash."""
    err = TrustError("not signed by the trusted CA")
    with pytest.raises(TrustError) as caught:
        skew_from_ping({"time": junk}, NOW, NOW + 0.1, err, 86400.0)
    assert caught.value is err
