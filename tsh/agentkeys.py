"""Load and remove our key and certificate in a running ssh-agent (``SSH_AUTH_SOCK``)."""

from __future__ import annotations

import logging
import os
import time

from remoteler.ca import private_key_to_openssh
from remoteler.identity import UserIdentity

log = logging.getLogger("remoteler.tsh")


async def add_to_agent(ident: UserIdentity) -> bool:
    if not os.environ.get("SSH_AUTH_SOCK"):
        return False
    import asyncssh

    key = asyncssh.import_private_key(private_key_to_openssh(ident.key))
    cert = asyncssh.import_certificate(ident.ssh_cert)
    lifetime = max(1, int(ident.valid_before - time.time()))
    try:
        async with asyncssh.connect_agent() as agent:
            await agent.add_keys([(key, cert)], lifetime=lifetime)
    except (OSError, asyncssh.Error, ValueError):
        return False
    return True


async def remove_from_agent(ident: UserIdentity) -> int:
    if not os.environ.get("SSH_AUTH_SOCK"):
        return 0
    import asyncssh

    ours = asyncssh.import_private_key(private_key_to_openssh(ident.key)).public_data
    removed = 0
    try:
        async with asyncssh.connect_agent() as agent:
            keys = await agent.get_keys()
            mine = [k for k in keys if k.public_data == ours or _cert_key(k) == ours]
            if mine:
                await agent.remove_keys(mine)
                removed = len(mine)
    except (OSError, asyncssh.Error, ValueError):
        return 0
    return removed


def _cert_key(pair: object) -> bytes | None:
    from remoteler.ca import CAError, parse_certificate
    from remoteler.ca.keys import public_key_to_openssh

    data = getattr(pair, "public_data", b"")
    try:
        parsed = parse_certificate(data)
    except CAError:
        return None
    import asyncssh

    line = public_key_to_openssh(parsed.subject_public)  # type: ignore[arg-type]
    return bytes(asyncssh.import_public_key(line).public_data)
