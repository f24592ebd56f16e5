"""The cluster's CAs kept in the shared storage (PostgreSQL), encrypted with the CA passphrase.

Several hubs on one database must sign with the same two CAs. The first hub to
start finds none stored, generates both and stores them with
``storage.authorities.create`` (atomic: if another hub won the race, its CAs are
read instead); every hub then writes the stored CAs into its own data directory
(keys encrypted as there too), where the rest of the hub reads them. A hub on
an empty data directory, given the same ``--storage`` URL and passphrase,
serves the same cluster. The key bytes in the database are always
``ENCRYPTED PRIVATE KEY`` PEM (hub/secrets.py): the database never sees a CA key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import get_args

from hub import secrets as hs
from hub.datadir import DataDir, check_cluster_name
from hub.storage.api import Storage, StoredCA
from remoteler.ca import CAError, CAKind, CertAuthority, write_file_atomic, write_secret_file
from remoteler.ca import x509 as ca_x509
from remoteler.errors import ConfigError

KINDS: tuple[CAKind, ...] = get_args(CAKind)
#: Settings key of the cluster name (the first hub's --cluster-name).
CLUSTER_KEY = "cluster_name"


def to_stored(ca: CertAuthority, passphrase: bytes, slot: str = "current") -> StoredCA:
    return StoredCA(
        kind=ca.kind,
        slot="next" if slot == "next" else "current",
        private_key=hs.encrypt_private_key(ca.private_key, passphrase),
        ssh_public=ca.ssh_public_line(),
        x509_pem=ca.x509_pem,
    )


def from_stored(stored: StoredCA, passphrase: bytes) -> CertAuthority:
    """The CA, its key decrypted; :class:`ConfigError` (one line) on a wrong passphrase."""
    if not hs.is_encrypted_key(stored.private_key):
        raise ConfigError(
            f"the stored {stored.kind} CA key is not encrypted: the shared database was "
            "written by something else; restore it from a backup"
        )
    try:
        key = hs.decrypt_private_key(stored.private_key, passphrase)
    except (ValueError, TypeError):
        raise ConfigError(
            f"wrong CA passphrase for the {stored.kind} CA in the shared database: give the "
            "passphrase of the cluster's first hub with --ca-passphrase-file"
        ) from None
    try:
        return CertAuthority(
            stored.kind, ca_x509.cert_organization(stored.x509_pem), key, stored.x509_pem
        )
    except CAError as exc:
        raise ConfigError(f"the stored {stored.kind} CA is unusable: {exc}") from None


async def cluster_cas(
    storage: Storage, cluster: str, passphrase: bytes
) -> tuple[str, list[StoredCA]]:
    """The cluster name and current CAs in ``storage`` (created on the cluster's first
    start), checked against ``passphrase``."""
    cluster = await storage.settings.put_if_absent(CLUSTER_KEY, check_cluster_name(cluster))
    stored = [ca for ca in await storage.authorities.all() if ca.slot == "current"]
    if not stored:
        fresh = [CertAuthority.generate(kind, cluster) for kind in KINDS]
        encrypted = await asyncio.to_thread(lambda: [to_stored(ca, passphrase) for ca in fresh])
        await storage.authorities.create(encrypted)  # False: another hub was first
        stored = [ca for ca in await storage.authorities.all() if ca.slot == "current"]
    missing = [kind for kind in KINDS if kind not in {ca.kind for ca in stored}]
    if missing:
        raise ConfigError(f"the shared database has no {missing[0]} CA: restore it from a backup")
    await asyncio.to_thread(from_stored, stored[0], passphrase)  # a wrong passphrase: now
    return cluster, stored


def install(data: DataDir, cluster: str, stored: Sequence[StoredCA]) -> None:
    """Make ``data`` a data directory of ``cluster`` holding the ``stored`` CAs, their keys
    as stored (encrypted), replacing other CAs: with shared storage, the database is the
    truth and the data directory a copy."""
    data.path.mkdir(mode=0o700, parents=True, exist_ok=True)
    meta = data.path / "cluster.json"
    if meta.exists() and data.cluster_name() != cluster:
        raise ConfigError(
            f"{data.path} belongs to cluster {data.cluster_name()!r}, the shared database to "
            f"{cluster!r}: give an empty --data-dir"
        )
    meta.write_text(json.dumps({"cluster": cluster}))
    data.ca_dir.mkdir(mode=0o700, exist_ok=True)
    for ca in stored:
        key_path, pub_path, crt_path = CertAuthority.paths(data.ca_dir, ca.kind)
        same = crt_path.exists() and crt_path.read_bytes() == ca.x509_pem and key_path.exists()
        if same and key_path.read_bytes() == ca.private_key:
            continue
        write_file_atomic(crt_path, ca.x509_pem, 0o644)
        write_file_atomic(pub_path, (ca.ssh_public.strip() + "\n").encode(), 0o644)
        write_secret_file(key_path, ca.private_key)
