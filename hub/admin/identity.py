"""The hub's built-in admin identity, ``DATA/admin-identity``: what ``tctl`` uses on
the hub host with no flags.

The same four files as ``tctl auth sign -o FILE`` writes (remoteler/identity.py),
each 0600, for the reserved user :data:`~remoteler.admin.BUILTIN_ADMIN` with the
preset role ``editor``. That name is not a stored user and no user can be
created with it, so only the hub issues certificates for it. The hub writes the
identity at every start and renews it when less than half of :data:`ADMIN_TTL`
is left or when the CA rotation state changed (new user or host CA), so that a
file read by tctl is always signed by the CAs the hub trusts now.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.auth.service import AuthService
from hub.storage.api import User
from remoteler.admin import ADMIN_IDENTITY_FILE, BUILTIN_ADMIN
from remoteler.identity import identity_paths

log = logging.getLogger("remoteler.hub.admin")

#: Lifetime of the admin identity's certificates, seconds (renewed at half of it).
ADMIN_TTL = 12 * 3600
#: Seconds between checks whether the identity is due for renewal.
CHECK_INTERVAL = 2.0


@dataclass(frozen=True)
class Written:
    """What the file on disk holds: its expiry and the CA revision that signed it."""

    expires: float
    revision: str


def due(written: Written | None, now: float, revision: str, ttl: float = ADMIN_TTL) -> bool:
    """Whether to write a new identity: none yet, half its life gone, or the CAs changed."""
    return written is None or written.expires - now < ttl / 2 or written.revision != revision


class AdminIdentity:
    """Writes and renews ``DATA/admin-identity``; run :meth:`run` for the hub's lifetime."""

    def __init__(
        self,
        data_dir: Path,
        auth: AuthService,
        revision: Callable[[], str],
        host_ca_pems: Callable[[], list[bytes]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = data_dir / ADMIN_IDENTITY_FILE
        self.auth = auth
        self.revision = revision
        self.host_ca_pems = host_ca_pems
        self.clock = clock
        self.written: Written | None = None

    async def renew_if_due(self) -> bool:
        now, revision = self.clock(), self.revision()
        if not due(self.written, now, revision) and self.path.exists():
            return False
        await self.write(revision)
        return True

    async def write(self, revision: str) -> None:
        from remoteler.ca import generate_private_key, private_key_to_openssh, public_key_to_openssh
        from remoteler.fsutil import write_secret_file

        key = generate_private_key()
        admin = User(BUILTIN_ADMIN, ("editor",), (), None, None, 0, self.clock())
        auth = copy.copy(self.auth)
        auth.audit = None  # logged, not audited: what is done with it is (hub/admin/rpc.py)
        issued = await auth.issue_user_certs(
            admin, public_key_to_openssh(key.public_key()), ADMIN_TTL
        )
        key_path, cert_path, tls_path, ca_path = identity_paths(self.path)
        # Certificates first, the key last: a reader between two renames sees a key that
        # does not match and reads again (tctl/hubclient.py).
        write_secret_file(cert_path, issued.ssh_cert.strip().encode() + b"\n")
        write_secret_file(tls_path, issued.tls_cert.encode())
        write_secret_file(ca_path, b"".join(self.host_ca_pems()))
        write_secret_file(key_path, private_key_to_openssh(key))
        self.written = Written(float(issued.expires), revision)
        log.info(
            "admin identity written", extra={"path": str(self.path), "expires": issued.expires}
        )

    async def run(self, interval: float = CHECK_INTERVAL) -> None:
        while True:
            try:
                await self.renew_if_due()
            except Exception:
                log.exception("writing the admin identity failed; will retry")
            await asyncio.sleep(interval)


def for_hub(data_dir: Path, auth: AuthService, rotation: Any) -> AdminIdentity:
    """The keeper for a hub whose CAs ``rotation`` (hub/rotation/runtime.py) follows."""
    return AdminIdentity(
        data_dir,
        auth,
        revision=lambda: str(rotation.cas.revision),
        host_ca_pems=lambda: list(rotation.cas.host.trusted_pems()),
    )
