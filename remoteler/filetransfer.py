"""What counts as file transfer in an SSH session (the ``file_transfer`` permission).

Shared by the embedded server (:mod:`edge_agent.sftp`) and the hub's recording
proxy (:mod:`hub.recording.session`), which enforces the permission for devices
whose own sshd cannot read the signed rules.
"""

from __future__ import annotations

import os
import shlex

#: The one subsystem that is file transfer (RFC 4254 section 6.5).
SFTP_SUBSYSTEM = "sftp"
#: What the user is told when the roles leave file transfer out.
FILE_TRANSFER_REFUSED = "file transfer is not permitted by your roles"


def is_legacy_scp(command: str) -> bool:
    """Whether ``command`` is the server side of legacy scp (``scp [-r] [-d] -t|-f PATH``)."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return False
    flags = {c for arg in argv[1:] if arg.startswith("-") for c in arg[1:]}
    return bool(argv) and os.path.basename(argv[0]) == "scp" and bool(flags & {"t", "f"})
