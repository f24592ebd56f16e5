"""The hub-certificate check at hub-corrected time (edge_agent/clockdial.py), with
real certificates from the CA module; the dial itself runs in
tests/e2e/test_clock_skew.py."""

from __future__ import annotations

import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from edge_agent.clockdial import check_hub_cert
from remoteler.ca import CAError, CertAuthority, generate_private_key

NOW = int(time.time())


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def host_ca() -> CertAuthority:
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
