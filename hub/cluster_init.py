"""A cluster's identity in storage on the first start: its name and its two CAs.

The first hub to start on a storage stores the cluster name (``--cluster-name``) and
generates the user and host CAs; a later start (or a second hub on the same
storage) reads what is there, so its own ``--cluster-name`` is ignored, as before.
With a CA passphrase every CA key is stored encrypted; plain keys from before the
passphrase was set are encrypted in place (one way).
"""

from __future__ import annotations

import logging
from typing import get_args

from hub.cakeys import encrypt_stored, to_stored
from hub.datadir import check_cluster_name
from hub.storage.api import Storage, StorageError
from remoteler.ca import CAKind, CertAuthority
from remoteler.errors import ConfigError

log = logging.getLogger("remoteler.hub")

KINDS: tuple[CAKind, ...] = get_args(CAKind)


async def init_cluster(storage: Storage, cluster: str, passphrase: bytes | None) -> str:
    """The stored cluster name (``cluster`` on the first start); both CAs exist after."""
    try:
        name = await storage.settings.get("cluster")
        if name is None:
            name = await storage.settings.put_if_absent("cluster", check_cluster_name(cluster))
        stored = await storage.authorities.all()
        if not any(c.slot == "current" for c in stored):
            fresh = [
                to_stored(CertAuthority.generate(kind, name), "current", passphrase)
                for kind in KINDS
            ]
            if await storage.authorities.create(fresh):
                log.info("cluster CAs created", extra={"cluster": name})
            stored = await storage.authorities.all()
        if passphrase is not None:
            plain = [e for c in stored if (e := encrypt_stored(c, passphrase)) is not None]
            if plain:
                await storage.authorities.replace_keys(plain)
                for ca in plain:
                    log.info(
                        "CA key encrypted with the CA passphrase",
                        extra={"ca_type": ca.kind, "slot": ca.slot},
                    )
    except StorageError as exc:
        raise ConfigError(str(exc)) from None
    return name
