"""The web certificate (hub/web/webtls.py): a P-256 leaf from the hub's web CA, kept
while it is fresh and names every host, re-issued otherwise; operator files checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from hub.web.webtls import LEAF_TTL, WebCA, operator_context, web_context
from remoteler.errors import ConfigError


def _names(chain: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(chain)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }


def test_leaf_is_p256_names_the_hosts_and_chains_to_the_ca(tmp_path: Path) -> None:
    ca = WebCA(tmp_path, "fleet")
    chain, key = ca.leaf(["hub.example.com", "10.1.2.3", "0.0.0.0"])
    leaf = x509.load_pem_x509_certificate(chain)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert {"hub.example.com", "10.1.2.3", "localhost", "127.0.0.1"} <= _names(chain)
    assert "0.0.0.0" not in _names(chain)
    root = x509.load_pem_x509_certificate(ca.ca_path.read_bytes())
    leaf.verify_directly_issued_by(root)
    assert (tmp_path / "web" / "ca.key").stat().st_mode & 0o077 == 0
    web_context(chain, key)  # loads


def test_leaf_is_kept_while_fresh_and_reissued_for_new_names_or_age(tmp_path: Path) -> None:
    ca = WebCA(tmp_path, "fleet")
    first, _ = ca.leaf(["a.example"])
    assert ca.leaf(["a.example"])[0] == first
    current, _ = ca.leaf(["b.example"])
    assert current != first  # a new --public-addr
    later = datetime.now(UTC) + LEAF_TTL - timedelta(days=1)
    aged, _ = ca.leaf(["b.example"], now=later)
    assert aged != current  # re-issued near expiry
    assert x509.load_pem_x509_certificate(aged).not_valid_after_utc > later + timedelta(days=30)


def test_a_damaged_ca_and_bad_operator_files_are_one_clear_error(tmp_path: Path) -> None:
    ca = WebCA(tmp_path, "fleet")
    ca.leaf([])
    (tmp_path / "web" / "ca.key").write_bytes(b"not a key")
    with pytest.raises(ConfigError, match="remove the directory"):
        ca.leaf([])
    with pytest.raises(ConfigError, match="--web-cert"):
        operator_context(str(tmp_path / "missing.crt"), str(tmp_path / "missing.key"))
