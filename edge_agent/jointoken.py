"""Where ``edge-agent start`` takes its join token from, never the process list.

Sources, first found wins: ``--token-file FILE`` (or ``token-file`` in the config
file), the config file's ``token`` (a 0600 file), ``$REMOTELER_JOIN_TOKEN``.
``--token TOKEN`` still works but every user of the device can read it in ``ps``
(``/proc/PID/cmdline``): it costs one warning line. The token is read only when
the agent has to join (first start, or a rejoin after a CA rotation): a token
file removed after the first start does not stop later starts.
"""

from __future__ import annotations

import os
import stat
from collections.abc import MutableMapping
from pathlib import Path

from remoteler.errors import ConfigError, UsageError

ENV_VAR = "REMOTELER_JOIN_TOKEN"
#: The line ``--token`` on the command line costs (stderr, once).
CMDLINE_WARNING = (
    "edge-agent: warning: --token is visible to every user of this device in the process "
    "list (ps); use --token-file FILE or $REMOTELER_JOIN_TOKEN instead"
)
#: A join token is a few dozen characters; anything much longer is the wrong file.
MAX_TOKEN_FILE = 4096


def take_env_token(environ: MutableMapping[str, str]) -> str | None:
    """``$REMOTELER_JOIN_TOKEN``, removed from ``environ`` so that nothing the agent
    starts (sessions, firmware hooks) inherits it."""
    value = environ.pop(ENV_VAR, None)
    return value.strip() or None if value is not None else None


def read_token_file(path: Path) -> tuple[str, str | None]:
    """The token in ``path`` and a warning line if others can read the file.

    ConfigError (one line) if the file cannot be read, is empty or is not a token.
    """
    try:
        # Non-blocking open: a named pipe with no writer must not hang the start.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if stat.S_ISFIFO(mode):  # '--token-file <(pass show token)', /dev/stdin
                os.set_blocking(fd, True)  # no writer left: reads end at once (empty)
            elif not stat.S_ISREG(mode):
                raise ConfigError(f"token file {path} is not a regular file; give the token's file")
            data = f.read(MAX_TOKEN_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"token file {path} does not exist; write the token from "
            "'tctl tokens add --type node' into it, or fix --token-file"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"cannot read token file {path} (permission denied); check its owner and mode"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"token file {path} is a directory; give the token's file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
    token = data.decode("ascii", errors="replace").strip()
    if not token:
        raise ConfigError(
            f"token file {path} is empty; write the token from 'tctl tokens add --type node' "
            "into it"
        )
    if len(data) > MAX_TOKEN_FILE or not token.isascii() or any(c.isspace() for c in token):
        raise ConfigError(
            f"token file {path} does not hold one join token; it must contain only the token"
        )
    warning = None
    if stat.S_ISREG(mode) and mode & (stat.S_IRGRP | stat.S_IROTH):
        warning = (
            f"edge-agent: warning: token file {path} is readable by other users "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it, and delete it once the node joined"
        )
    return token, warning


def join_token(
    token: str | None, token_file: str | None, env_token: str | None
) -> tuple[str | None, str | None]:
    """The join token (or None) and a warning line, from the three sources above.

    Call only when the agent has to join: a token file is read here.
    """
    if token and token_file:
        raise UsageError("give the join token once: --token-file FILE or --token, not both")
    if token_file:
        return read_token_file(Path(token_file))
    return (token or env_token or None), None
