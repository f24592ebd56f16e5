"""The hub's data directory: CAs, the TLS server identity, the database.

Layout (all secrets 0600, directory 0700)::

    DIR/cluster.json      cluster name
    DIR/ca/               user_ca.{key,pub,crt}, host_ca.{key,pub,crt}
    DIR/tls/              hub.key, hub.crt (reissued at every start by the host CA)
    DIR/hub.db            SQLite (WAL): users, roles, tokens, nodes
    DIR/hub.addr          the address the running hub listens on
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from remoteler.ca import CAError, CertAuthority, generate_private_key, write_secret_file
from remoteler.errors import ConfigError

SERVER_CERT_TTL = 365 * 24 * 3600


@dataclass
class DataDir:
    path: Path

    @property
    def ca_dir(self) -> Path:
        return self.path / "ca"

    @property
    def db_path(self) -> Path:
        return self.path / "hub.db"

    @property
    def addr_file(self) -> Path:
        return self.path / "hub.addr"

    def cluster_name(self) -> str:
        meta = self.path / "cluster.json"
        if not meta.exists():
            raise ConfigError(
                f"{self.path} is not a hub data directory; start the hub once with "
                f"'hub start --data-dir {self.path}' or pass the right --data-dir"
            )
        return str(json.loads(meta.read_text())["cluster"])

    def init(self, cluster: str) -> str:
        """Create the directory and both CAs on first start; return the cluster name."""
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        meta = self.path / "cluster.json"
        if meta.exists():
            cluster = self.cluster_name()
        else:
            meta.write_text(json.dumps({"cluster": cluster}))
        self.ca_dir.mkdir(exist_ok=True)
        os.chmod(self.ca_dir, 0o700)
        for kind in ("user", "host"):
            if not CertAuthority.exists(self.ca_dir, kind):
                CertAuthority.generate(kind, cluster).save(self.ca_dir)
        return cluster

    def load_ca(self, kind: str) -> CertAuthority:
        self.cluster_name()
        try:
            return CertAuthority.load(self.ca_dir, kind)  # type: ignore[arg-type]
        except CAError as exc:
            raise ConfigError(f"cannot load the {kind} CA from {self.ca_dir}: {exc}") from None

    def issue_server_identity(
        self, host_ca: CertAuthority, hosts: list[str]
    ) -> tuple[bytes, bytes]:
        """A fresh serverAuth certificate for the hub, signed by the host CA."""
        key = generate_private_key()
        names = {"localhost", socket.gethostname(), *hosts}
        ips = {"127.0.0.1", "::1"}
        dns = sorted(n for n in names if n and not _is_ip(n))
        ips |= {n for n in names if _is_ip(n)}
        cert = host_ca.issue_x509(
            key.public_key(),
            common_name="remoteler-hub",
            organization="remoteler-hub",
            usage="server",
            dns_names=dns,
            ip_addresses=sorted(ips),
            ttl_seconds=SERVER_CERT_TTL,
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tls_dir = self.path / "tls"
        tls_dir.mkdir(exist_ok=True)
        os.chmod(tls_dir, 0o700)
        write_secret_file(tls_dir / "hub.key", key_pem)
        (tls_dir / "hub.crt").write_bytes(cert)
        return cert, key_pem


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
