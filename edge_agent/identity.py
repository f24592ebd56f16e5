"""The node's identity in its data directory (0700; key 0600), written once at join.

Layout::

    DIR/identity/node.key        OpenSSH private key (host key and TLS key)
    DIR/identity/node-cert.pub   host certificate from the host CA
    DIR/identity/node.crt        x509 client certificate for the tunnel
    DIR/identity/host_ca.crt     the hub's CA (pinned at join)
    DIR/identity/user_ca.pub     the user CA that signs the certificates we accept
    DIR/identity/node.json       node id, name, hub address, labels from the token
    DIR/identity/rotation.json   certificates and trusted CAs pushed by a CA rotation

``host_ca.crt`` and ``user_ca.pub`` may hold several CAs (one PEM or line
each): during a CA rotation both the old and the new one are trusted.
A rotation update replaces certificates and CAs in one atomic write of
``rotation.json``, which :meth:`NodeIdentity.load` lays over the other files
(which are then rewritten for tools that read them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
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

ROTATION_FILE = "rotation.json"


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
    #: the CA rotation revision these certificates and CAs belong to ("" at join)
    ca_revision: str = ""
    #: labels from the join token: they win over --labels, at the hub and on the device
    token_labels: dict[str, str] = field(default_factory=dict)
    #: where it was loaded from or saved to (a rotation update saves there)
    data_dir: Path | None = field(default=None, compare=False, repr=False)

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
        self.data_dir = data_dir
        d = self.directory(data_dir)
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(data_dir, 0o700)
        os.chmod(d, 0o700)
        # A new identity (a join) replaces whatever a rotation had pushed before.
        (d / ROTATION_FILE).unlink(missing_ok=True)
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
            "ca_revision": self.ca_revision,
            "token_labels": self.token_labels,
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
                ca_revision=str(meta.get("ca_revision", "")),
                token_labels=_labels(meta.get("token_labels")),
                data_dir=data_dir,
            )._with_rotation(d)
        except CAError as exc:
            raise ConfigError(f"node identity in {d} is unusable: {exc}") from None
        except (OSError, KeyError, ValueError) as exc:
            raise ConfigError(
                f"node identity in {d} is damaged ({exc}); "
                f"remove {d} and join again with a new token"
            ) from None

    # -- CA rotation ------------------------------------------------------------

    def rotation_fields(self) -> dict[str, str]:
        return {
            "ca_revision": self.ca_revision,
            "ssh_cert": self.ssh_cert,
            "tls_cert": self.tls_cert.decode(),
            "host_ca_pem": self.host_ca_pem.decode(),
            "user_ca_ssh": self.user_ca_ssh,
        }

    def save_rotation(self, data_dir: Path) -> None:
        """Persist what a rotation pushed, atomically (one 0600 file), then the plain files."""
        d = self.directory(data_dir)
        write_secret_file(d / ROTATION_FILE, json.dumps(self.rotation_fields()).encode())
        write_secret_file(d / "node-cert.pub", self.ssh_cert.encode())
        write_secret_file(d / "node.crt", self.tls_cert)
        write_secret_file(d / "host_ca.crt", self.host_ca_pem)
        write_secret_file(d / "user_ca.pub", self.user_ca_ssh.encode())

    def _with_rotation(self, d: Path) -> NodeIdentity:
        path = d / ROTATION_FILE
        if not path.exists():
            return self
        data = json.loads(path.read_text())
        self.ca_revision = str(data["ca_revision"])
        self.ssh_cert = str(data["ssh_cert"])
        self.tls_cert = str(data["tls_cert"]).encode()
        self.host_ca_pem = str(data["host_ca_pem"]).encode()
        self.user_ca_ssh = str(data["user_ca_ssh"])
        return self


def _labels(value: object) -> dict[str, str]:
    """Token labels as stored in node.json (absent in identities from before they were)."""
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}
