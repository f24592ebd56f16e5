"""The built-in SFTP server's program: ``python -I -m edge_agent.sftp_child``.

Speaks SFTP v3 on stdin/stdout until the client's EOF, in the working directory
it was started in (the agent starts it as it would start OpenSSH's
``sftp-server``: :mod:`edge_agent.sftp`). The protocol is
:mod:`edge_agent.sftp_stdio`; this is only the process around it.

Options: ``--user NAME`` (started as root: become that account, its groups
included, once the interpreter and every module are loaded and before a byte
of the client's is read; so the agent's interpreter need not be readable by
the login, as a private venv under /root or /opt is not), and
``--client-version SSH-2.0-...`` (asyncssh swaps ``SYMLINK``'s arguments for
OpenSSH clients, which send them reversed). Exit 0 at EOF, 1 when the options,
the account, stdin or stdout are not usable. Nothing is written to stderr
otherwise: the agent passes stderr to the user's channel.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import pwd
import sys
import types
from collections.abc import Callable, Coroutine
from typing import Any


def parse_args(argv: list[str]) -> dict[str, str]:
    """``--user NAME`` and ``--client-version V``, each at most once; ValueError otherwise."""
    if len(argv) % 2:
        raise ValueError("usage: sftp_child [--user NAME] [--client-version V]")
    out: dict[str, str] = {}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        key = {"--user": "user", "--client-version": "client_version"}.get(flag)
        if key is None or key in out:
            raise ValueError(f"unknown or repeated option {flag!r}")
        out[key] = value
    return out


def load_server() -> Callable[[str], Coroutine[Any, Any, None]]:
    """Import the server with only asyncssh's SFTP modules: its package ``__init__``
    loads the whole SSH stack (connections, every cipher, ``cryptography``), which
    a child speaking SFTP on pipes never uses. An empty ``asyncssh`` package object
    stands in for it, so ``asyncssh.sftp`` brings in only ``constants``,
    ``logging``, ``misc``, ``packet`` and ``version``: measured 22 MiB RSS instead
    of 40, and 0.4-0.9 s to load instead of 1.1-1.5 s (2-core machine, load 7-10)."""
    if "asyncssh" not in sys.modules:
        spec = importlib.util.find_spec("asyncssh")
        if spec is not None and spec.submodule_search_locations is not None:
            package = types.ModuleType("asyncssh")
            package.__path__ = list(spec.submodule_search_locations)
            package.__spec__ = spec
            sys.modules["asyncssh"] = package
    # asyncssh imports grp for ls -l's group names after become(), when the
    # interpreter's files may no longer be readable (pwd: imported above)
    import grp  # noqa: F401

    from edge_agent.sftp_stdio import serve_stdio

    return serve_stdio


def become(name: str) -> None:
    """Switch to account ``name`` for good (groups, gid, then uid; as sshd does)."""
    pw = pwd.getpwnam(name)  # KeyError: no such account
    os.setgroups(os.getgrouplist(pw.pw_name, pw.pw_gid))
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if pw.pw_uid != 0 and (os.geteuid() == 0 or os.getegid() != pw.pw_gid):
        raise PermissionError(f"could not switch to {name!r}")


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
        serve_stdio = load_server()  # every module loaded before become()

        if "user" in opts:
            become(opts["user"])
    except (ValueError, KeyError, OSError) as exc:
        print(f"sftp: cannot start: {exc}", file=sys.stderr)
        return 1
    logging.getLogger("asyncssh").addHandler(logging.NullHandler())
    logging.getLogger("asyncssh").propagate = False
    try:
        asyncio.run(serve_stdio(opts.get("client_version", "")))
    except (OSError, ValueError) as exc:  # stdin/stdout not pipes or sockets, or gone
        print(f"sftp: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a request asyncssh could not handle: one line, no traceback
        print(f"sftp: internal error ({type(exc).__name__}); session ended", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
