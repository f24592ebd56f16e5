"""The web console's TLS: an ECDSA P-256 certificate browsers accept (docs/web.md).

Browsers accept neither Ed25519 server certificates nor chains signed with Ed25519,
and the cluster's CAs are Ed25519. So by default the hub keeps a *web CA* of its own
(ECDSA P-256, ``DATA/web/ca.crt`` and ``ca.key``, made at first start) and issues a
P-256 leaf from it for the names the API certificate names (``localhost``, the
machine's name, ``--listen`` and ``--public-addr`` hosts); a browser on another
machine trusts ``DATA/web/ca.crt``. ``--web-cert/--web-key`` serve an operator's
certificate (a public name from a public CA) instead. The API's pinned Ed25519 path
is unchanged: the listener chooses by the ClientHello's ALPN (hub/net/listener.py).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from remoteler.errors import ConfigError
from remoteler.fsutil import write_secret_file
from remoteler.tlsutil import load_chain

log = logging.getLogger("remoteler.hub.web")

#: ALPN the web lane answers (browsers offer h2 too; aiohttp speaks HTTP/1.1).
WEB_ALPN = "http/1.1"
CA_TTL = timedelta(days=3650)
#: Leaf lifetime; a new one is issued at start when less than RENEW_BEFORE is left.
LEAF_TTL = timedelta(days=90)
RENEW_BEFORE = timedelta(days=30)
BACKDATE = timedelta(hours=1)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common: str, cluster: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster),
        ]
    )


def _make_ca(cluster: str, now: datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"Remoteler web CA ({cluster})", cluster)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_TTL)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def web_names(hosts: list[str]) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) the web certificate names, as the API's does."""
    names = {"localhost", socket.gethostname(), *hosts}
    ips = {"127.0.0.1", "::1"} | {n for n in names if _is_ip(n)}
    ips -= {"0.0.0.0", "::"}  # noqa: S104  (a wildcard bind is no address to name)
    dns = sorted(n for n in names if n and not _is_ip(n))
    return dns, sorted(ips)


def issue_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: list[str],
    now: datetime,
) -> tuple[bytes, bytes]:
    """A P-256 serverAuth leaf for ``hosts``: (certificate chain PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    dns, ips = web_names(hosts)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("remoteler-hub-web", ca_cert.subject.rfc4514_string()[:60]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + LEAF_TTL, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    return pem + ca_cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


class WebCA:
    """``DATA/web``: the web CA and the current leaf, made and renewed as needed."""

    def __init__(self, data_dir: Path, cluster: str) -> None:
        self.dir = data_dir / "web"
        self.cluster = cluster

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.crt"

    def _load_or_make_ca(
        self, now: datetime
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key_path = self.dir / "ca.key"
        if key_path.exists() and self.ca_path.exists():
            try:
                key = serialization.load_pem_private_key(key_path.read_bytes(), None)
                cert = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
            except (ValueError, TypeError) as exc:
                raise ConfigError(
                    f"{self.dir} holds an unreadable web CA ({exc}); remove the directory "
                    "to make a new one (browsers must then trust the new ca.crt)"
                ) from None
            if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc > now:
                return key, cert
            log.warning(
                "web CA expired or not ECDSA: making a new one", extra={"dir": str(self.dir)}
            )
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        key, cert = _make_ca(self.cluster, now)
        write_secret_file(key_path, _key_pem(key))
        self.ca_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        log.info("web CA created", extra={"path": str(self.ca_path)})
        return key, cert

    def leaf(self, hosts: list[str], now: datetime | None = None) -> tuple[bytes, bytes]:
        """The leaf to serve (chain PEM, key PEM): the stored one while it is good for
        ``RENEW_BEFORE`` and names every host, else a new one."""
        now = now or datetime.now(UTC)
        ca_key, ca_cert = self._load_or_make_ca(now)
        crt, key = self.dir / "hub.crt", self.dir / "hub.key"
        if crt.exists() and key.exists():
            try:
                chain, key_pem = crt.read_bytes(), key.read_bytes()
                current = x509.load_pem_x509_certificate(chain)
                names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                have = {str(v) for v in names.value.get_values_for_type(x509.DNSName)}
                have |= {str(v) for v in names.value.get_values_for_type(x509.IPAddress)}
                dns, ips = web_names(hosts)
                fresh = current.not_valid_after_utc - now > RENEW_BEFORE
                if fresh and set(dns) | set(ips) <= have and current.issuer == ca_cert.subject:
                    return chain, key_pem
            except (ValueError, x509.ExtensionNotFound):
                pass  # replaced below
        chain, key_pem = issue_leaf(ca_key, ca_cert, hosts, now)
        write_secret_file(key, key_pem)
        crt.write_bytes(chain)
        return chain, key_pem


def web_context(chain_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """The browser-facing context: TLS 1.2+ (browsers and scrapers), HTTP/1.1 ALPN."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(ctx, chain_pem, key_pem)
    ctx.set_alpn_protocols([WEB_ALPN])
    ctx.num_tickets = 0
    return ctx


def operator_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """``--web-cert/--web-key``: the operator's chain and key, checked at start."""
    try:
        chain, key = Path(cert_path).read_bytes(), Path(key_path).read_bytes()
        return web_context(chain, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot serve the web console with --web-cert {cert_path} --web-key {key_path} "
            f"({exc}); give a PEM chain and its matching unencrypted key"
        ) from None
