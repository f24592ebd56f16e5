"""Which SFTP server the agent's sessions use (``--sftp-server``).

Its own module, with no SSH imports: the agent sets it at start, and importing
:mod:`edge_agent.sftp` there would load asyncssh (~7 MiB of idle RSS) before the
first session needs it.
"""

from __future__ import annotations

import os

from remoteler.errors import UsageError

#: ``--sftp-server`` value for the agent's own SFTP server (the default).
BUILTIN = "builtin"

_server = BUILTIN


def configure(choice: str) -> None:
    """Set the SFTP server for this agent's sessions: :data:`BUILTIN` or the
    absolute path of an executable ``sftp-server``; :class:`UsageError` otherwise."""
    global _server
    executable = os.path.isfile(choice) and os.access(choice, os.X_OK)
    if choice != BUILTIN and not (os.path.isabs(choice) and executable):
        raise UsageError(
            f"--sftp-server {choice!r} is not an executable file: give the absolute path "
            f"of OpenSSH's sftp-server (e.g. /usr/lib/openssh/sftp-server) or {BUILTIN!r}"
        )
    _server = choice


def sftp_server() -> str:
    """What serves ``sftp``: :data:`BUILTIN` or a ``sftp-server`` path (see :func:`configure`)."""
    return _server
