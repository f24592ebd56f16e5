"""The node's identity in its data directory (0700; key 0600), written once at join.

Layout::

    DIR/identity/node.key        OpenSSH private key (host key and TLS key)
    DIR/identity/node-cert.pub   host certificate from the host CA
    DIR/identity/node.crt        x509 client certificate for the tunnel
    DIR/identity/host_ca.crt     the hub's CA (pinned at join)
    DIR/identity/user_ca.pub     the user CA that signs the certificates we accept
    DIR/identity/node.json       node id, name, hub address, labels from the token
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from remoteler.ca import (
    CAError,
    check_secret_file_mode,
    private_key_from_openssh,
    private_key_to_openssh,
    private_key_to_pkcs8_pem,
    write_secret_file,
)
from remoteler.errors import ConfigError


@dataclass
class NodeIdentity:
    key: Ed25519PrivateKey
    node_id: str
    name: str
    hub: str
    ssh_cert: str
    tls_cert: bytes
    host_ca_pem: bytes
    user_ca_ssh: str
    cluster: str

    @property
    def key_pem(self) -> bytes:
        return private_key_to_pkcs8_pem(self.key)

    @staticmethod
    def directory(data_dir: Path) -> Path:
        return data_dir / "identity"

    @classmethod
    def exists(cls, data_dir: Path) -> bool:
        return (cls.directory(data_dir) / "node.json").exists()

    def save(self, data_dir: Path) -> None:
        d = self.directory(data_dir)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        os.chmod(d, 0o700)
        write_secret_file(d / "node.key", private_key_to_openssh(self.key))
        write_secret_file(d / "node-cert.pub", self.ssh_cert.encode())
        write_secret_file(d / "node.crt", self.tls_cert)
        write_secret_file(d / "host_ca.crt", self.host_ca_pem)
        write_secret_file(d / "user_ca.pub", self.user_ca_ssh.encode())
        meta: dict[str, Any] = {
            "node_id": self.node_id,
            "name": self.name,
            "hub": self.hub,
            "cluster": self.cluster,
        }
        # node.json is written last: its presence means the identity is complete.
        write_secret_file(d / "node.json", json.dumps(meta, indent=2).encode())

    @classmethod
    def load(cls, data_dir: Path) -> NodeIdentity:
        d = cls.directory(data_dir)
        try:
            meta = json.loads((d / "node.json").read_text())
            check_secret_file_mode(d / "node.key")
            key = private_key_from_openssh((d / "node.key").read_bytes())
            return cls(
                key=key,
                node_id=meta["node_id"],
                name=meta["name"],
                hub=meta["hub"],
                cluster=meta.get("cluster", ""),
                ssh_cert=(d / "node-cert.pub").read_text().strip(),
                tls_cert=(d / "node.crt").read_bytes(),
                host_ca_pem=(d / "host_ca.crt").read_bytes(),
                user_ca_ssh=(d / "user_ca.pub").read_text().strip(),
            )
        except CAError as exc:
            raise ConfigError(f"node identity in {d} is unusable: {exc}") from None
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"node identity in {d} is damaged ({exc}); "
                f"remove {d} and join again with a new token"
            ) from None
