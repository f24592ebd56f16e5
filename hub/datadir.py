"""The hub's data directory: CAs, the TLS server identity, the database.

Layout (all secrets 0600, directory 0700)::

    DIR/cluster.json      cluster name
    DIR/ca/               user_ca.{key,pub,crt}, host_ca.{key,pub,crt}; the keys are
                          OpenSSH, or PKCS#8 encrypted with the CA passphrase (scrypt)
    DIR/tls/              hub.key, hub.crt (reissued at every start by the host CA)
    DIR/hub.db            SQLite (WAL): users, roles, tokens, nodes
    DIR/hub.addr          the address the running hub listens on
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from hub.auth import secrets as hs
from remoteler.ca import (
    CAError,
    CAKind,
    CertAuthority,
    check_secret_file_mode,
    generate_private_key,
    public_key_from_openssh,
    write_file_atomic,
    write_secret_file,
)
from remoteler.clockskew import DEFAULT_MAX_SKEW
from remoteler.errors import ConfigError

log = logging.getLogger("remoteler.hub")

SERVER_CERT_TTL = 365 * 24 * 3600
#: How far before its issue the hub's certificate is valid: an agent's bound on
#: clock skew (remoteler/clockskew.py, 24 h), so a device a day behind still
#: passes OpenSSL's own check (docs/certificates.md).
SERVER_CERT_BACKDATE = int(DEFAULT_MAX_SKEW)


#: A cluster name is the DNS suffix of node names (``NODE.<cluster>``), and the pattern
#: ``*.<cluster>`` in known_hosts lines: letters, digits, '-' and inner dots only, so that
#: no ``*``, ``?``, ``,`` or ``!`` turns the pattern into "any host".
_CLUSTER = re.compile(
    r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", re.I | re.A
)


def check_cluster_name(name: str) -> str:
    if len(name) > 63 or not _CLUSTER.fullmatch(name):
        raise ConfigError(
            f"bad --cluster-name {name[:80]!r}: use a DNS name (letters, digits, '-', "
            "inner dots; at most 63), as node names are NODE.<cluster>"
        )
    return name


@dataclass
class DataDir:
    path: Path
    #: encrypts the CA keys at rest; None: read $REMOTELER_CA_PASSPHRASE(_FILE) if set
    passphrase: bytes | None = field(default=None, repr=False)

    def ca_passphrase(self) -> bytes | None:
        if self.passphrase is None:
            self.passphrase = hs.read_passphrase(None)
        return self.passphrase

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
        try:
            return str(json.loads(meta.read_text())["cluster"])
        except (ValueError, KeyError, TypeError):  # JSON garbage, or not our shape
            raise ConfigError(
                f"{meta} is damaged: restore it from a backup, or write "
                '{"cluster": "NAME"} with the --cluster-name of the first start'
            ) from None

    def init(self, cluster: str) -> str:
        """Create the directory and both CAs on first start; return the cluster name."""
        self.path.mkdir(parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        meta = self.path / "cluster.json"
        if meta.exists():
            cluster = self.cluster_name()
        else:
            check_cluster_name(cluster)
            meta.write_text(json.dumps({"cluster": cluster}))
        self.ca_dir.mkdir(exist_ok=True)
        os.chmod(self.ca_dir, 0o700)
        kinds: tuple[CAKind, ...] = ("user", "host")
        for kind in kinds:
            if not CertAuthority.exists(self.ca_dir, kind):
                self.save_ca(CertAuthority.generate(kind, cluster), self.ca_dir)
        if self.ca_passphrase() is not None:
            self.encrypt_ca_keys()
        return cluster

    def load_ca(self, kind: str, directory: Path | None = None) -> CertAuthority:
        """The CA of ``kind`` from ``directory`` (default DIR/ca), decrypting its key if needed.

        Refuses a key file any group or other may access, naming the file and the fix.
        """
        self.cluster_name()
        directory = directory or self.ca_dir
        key_path, pub_path, crt_path = CertAuthority.paths(directory, kind)  # type: ignore[arg-type]
        try:
            if key_path.exists():
                check_secret_file_mode(key_path)
            if not key_path.exists() or not hs.is_encrypted_key(key_path.read_bytes()):
                return CertAuthority.load(directory, kind)  # type: ignore[arg-type]
            passphrase = self.ca_passphrase()
            if passphrase is None:
                raise ConfigError(
                    f"the {kind} CA key {key_path} is encrypted: give its passphrase with "
                    f"--ca-passphrase-file FILE or ${hs.PASSPHRASE_FILE_ENV} "
                    f"or ${hs.PASSPHRASE_ENV}"
                )
            try:
                key = hs.decrypt_private_key(key_path.read_bytes(), passphrase)
            except (ValueError, TypeError):
                raise ConfigError(
                    f"wrong CA passphrase for {key_path}: check --ca-passphrase-file "
                    f"or ${hs.PASSPHRASE_ENV}"
                ) from None
            pem = crt_path.read_bytes()
            from remoteler.ca import x509 as ca_x509

            ca = CertAuthority(kind, ca_x509.cert_organization(pem), key, pem)  # type: ignore[arg-type]
            if pub_path.exists() and public_key_from_openssh(pub_path.read_text()) != ca.public_key:
                raise ConfigError(f"{pub_path} does not match {key_path}; restore both from backup")
            return ca
        except CAError as exc:
            raise ConfigError(f"cannot load the {kind} CA from {directory}: {exc}") from None
        except OSError as exc:
            raise ConfigError(
                f"cannot load the {kind} CA from {directory}: {exc.strerror}: {exc.filename}"
            ) from None

    def save_ca(self, ca: CertAuthority, directory: Path) -> None:
        """Write ``ca`` into ``directory``, its key encrypted when a passphrase is set."""
        passphrase = self.ca_passphrase()
        if passphrase is None:
            ca.save(directory)
            return
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path, pub_path, crt_path = CertAuthority.paths(directory, ca.kind)
        write_file_atomic(crt_path, ca.x509_pem, 0o644)
        write_file_atomic(pub_path, (ca.ssh_public_line() + "\n").encode(), 0o644)
        write_secret_file(key_path, hs.encrypt_private_key(ca.private_key, passphrase))

    def encrypt_ca_keys(self) -> list[Path]:
        """Encrypt every plain CA key in DIR/ca with the passphrase (a one-way migration).

        Code that writes CA keys elsewhere (a rotation's next CA) should use
        :meth:`save_ca` and :meth:`load_ca` with its directory to get the same.
        """
        passphrase = self.ca_passphrase()
        done: list[Path] = []
        if passphrase is None:
            return done
        for key_path in sorted(self.ca_dir.glob("*_ca.key")):
            data = key_path.read_bytes()
            if hs.is_encrypted_key(data):
                continue
            check_secret_file_mode(key_path)
            from remoteler.ca import private_key_from_openssh

            key = private_key_from_openssh(data)
            write_secret_file(key_path, hs.encrypt_private_key(key, passphrase))
            done.append(key_path)
            log.info("CA key encrypted with the CA passphrase", extra={"path": str(key_path)})
        return done

    def issue_server_identity(
        self, host_ca: CertAuthority, hosts: list[str]
    ) -> tuple[bytes, bytes]:
        """A fresh serverAuth certificate for the hub, signed by the host CA."""
        key = generate_private_key()
        names = {"localhost", socket.gethostname(), *hosts}
        ips = {"127.0.0.1", "::1"}
        dns = sorted(n for n in names if n and not is_ip(n))
        ips |= {n for n in names if is_ip(n)}
        cert = host_ca.issue_x509(
            key.public_key(),
            common_name="remoteler-hub",
            organization="remoteler-hub",
            usage="server",
            dns_names=dns,
            ip_addresses=sorted(ips),
            # valid from 24 h (and issue_x509's 5 min) ago, for a year from now
            ttl_seconds=SERVER_CERT_TTL + SERVER_CERT_BACKDATE,
            now=int(time.time()) - SERVER_CERT_BACKDATE,
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


def is_ip(text: str) -> bool:
    """True if ``text`` is an IPv4 or IPv6 address (not a host name)."""
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
