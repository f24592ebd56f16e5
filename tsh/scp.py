"""``tsh scp``: copy files to and from a node over SFTP, through the hub.

The same end-to-end SSH connection as ``tsh ssh`` (:func:`tsh.ssh.open_ssh`),
then asyncssh's SFTP client on the node's ``sftp`` subsystem, which the agent
serves as the login with its built-in server or OpenSSH's ``sftp-server``
(edge_agent/sftp.py: gated by the ``file_transfer`` permission, one
``file.transfer`` event per file). Without ``-p`` what the copy creates gets
its source's mode as with OpenSSH's ``scp`` (tsh/scp_modes.py).
Files stream in blocks with a bounded number of requests in flight, so memory
stays flat whatever the size.

Exit status as ``scp``'s: 0 when everything was copied, 1 when a file failed
(one ``tsh: PATH: reason`` line each, the others still copied), 255 when the
connection to the node failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import sys
from dataclasses import dataclass
from typing import Any

from remoteler.errors import NodeError, UsageError
from remoteler.identity import UserIdentity
from remoteler.text import printable
from tsh.scp_modes import ModeFixer

#: How long to wait for the node's reason after it refused the sftp subsystem.
REFUSAL_GRACE = 5.0
#: At most this much of the node's stderr is read for that reason (one line is used).
REFUSAL_MAX = 4096
#: Paths in failure lines are cut to this many characters (reasons to printable's default).
PATH_MAX = 1024


@dataclass(frozen=True)
class Location:
    """One path argument: local, or ``login@node:path`` on a node."""

    path: str
    """The path; on a node, relative paths are from the login's home."""
    login: str = ""
    """The node's login (empty for a local path)."""
    node: str = ""
    """The node (empty for a local path)."""

    @property
    def remote(self) -> bool:
        return bool(self.node)

    def __str__(self) -> str:
        return f"{self.login}@{self.node}:{self.path}" if self.remote else self.path


def parse_location(arg: str) -> Location:
    """``login@node:path`` -> remote; anything else is local.

    As ``scp``: a colon before the first slash makes it remote, so
    ``./a:b`` and ``/tmp/a:b`` stay local.
    """
    head, colon, path = arg.partition(":")
    if not colon or "/" in head:
        return Location(arg)
    login, at, node = head.rpartition("@")
    if not at or not login or not node:
        raise UsageError(f"give the login for {arg!r}: login@node:path")
    if path == "~" or path.startswith("~/"):
        path = path[2:]  # sftp-server starts in the login's home
    return Location(path or ".", login, node)


@dataclass(frozen=True)
class Plan:
    """What one ``tsh scp`` run copies."""

    upload: bool
    """True: local sources to the node; False: node sources to a local path."""
    login: str
    """The node's login."""
    node: str
    """The one node involved."""
    sources: tuple[str, ...]
    """Source paths (on the node for a download)."""
    dest: str
    """Destination path (on the node for an upload)."""


def make_plan(args: list[str]) -> Plan:
    """Check the SRC... DST arguments; raise UsageError with what to do instead."""
    if len(args) < 2:
        raise UsageError("give a source and a destination: tsh scp [-r] SRC... DST")
    *srcs, dst = (parse_location(a) for a in args)
    dest_remote = dst.remote
    if any(s.remote for s in srcs) and dest_remote:
        raise UsageError(
            "copying from a node to a node is not supported: copy to a local path first"
        )
    if dest_remote:
        return Plan(True, dst.login, dst.node, tuple(s.path for s in srcs), dst.path)
    if not all(s.remote for s in srcs):
        raise UsageError("one side must be on a node: tsh scp SRC login@node:DST or the reverse")
    nodes = {(s.login, s.node) for s in srcs}
    if len(nodes) > 1:
        raise UsageError("all sources must be on one login@node: run tsh scp once per node")
    ((login, node),) = nodes
    return Plan(False, login, node, tuple(s.path for s in srcs), dst.path)


def describe(exc: BaseException) -> str:
    """A failure's reason in a few words, as ``scp`` prints them.

    The node chooses an SFTP status text: the result goes through :func:`printable`
    (in :meth:`Copier.fail`) before it reaches a terminal.
    """
    import asyncssh

    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return "no such file or directory"
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return "permission denied"
    if isinstance(exc, asyncssh.SFTPError):
        return str(exc.reason) or "failed"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class Refused(Exception):
    """The node refused the sftp subsystem; ``str()`` is its reason."""


async def start_sftp(conn: Any) -> Any:
    """Open the node's sftp subsystem; raise :class:`Refused` with the node's reason.

    asyncssh's ``start_sftp_client`` drops the channel's stderr, where the agent
    says why it refused (``remoteler: file transfer is not permitted ...``); so
    after a failure we ask once more on a bare session and read that stderr.
    Public asyncssh API only: its module-level SFTP start-up changed signature
    within the versions we allow.
    """
    import asyncssh

    try:
        return await conn.start_sftp_client()
    except (asyncssh.DisconnectError, ConnectionError):
        raise  # the connection itself (exit 255), not a refusal
    except asyncssh.Error as exc:
        failure = exc
    said = bytearray()

    async def first_line() -> None:
        # Bounded: a node that streams stderr without end must not hold us (or our memory).
        writer, _, stderr = await conn.open_session(subsystem="sftp", encoding=None)
        writer.write_eof()  # a server that did start sftp-server sees EOF and exits
        while len(said) < REFUSAL_MAX and b"\n" not in said:
            chunk = await stderr.read(REFUSAL_MAX - len(said))
            if not chunk:
                return
            said.extend(chunk)

    # On a timeout or error, what arrived in time is still the node's reason.
    with contextlib.suppress(TimeoutError, asyncssh.Error, ConnectionError):
        await asyncio.wait_for(first_line(), REFUSAL_GRACE)
    text = bytes(said).decode("utf-8", "replace").strip().removeprefix("remoteler: ")
    why = text.splitlines()[0] if text else f"sftp failed: {failure}"
    raise Refused(printable(why)) from None


class Copier:
    """Runs a :class:`Plan` on an SFTP client; collects one failure line per file."""

    def __init__(
        self, sftp: Any, plan: Plan, recurse: bool, preserve: bool, progress: Any | None = None
    ) -> None:
        self.sftp = sftp
        self.plan = plan
        self.recurse = recurse
        self.preserve = preserve
        self.progress = progress
        self.failures: list[str] = []

    def fail(self, path: str, reason: str) -> None:
        # Both may come from the node (a name under a -r download, an SFTP status text).
        self.failures.append(f"{printable(path, PATH_MAX)}: {printable(reason)}")

    def _on_error(self, exc: Exception) -> None:
        import asyncssh

        if isinstance(exc, asyncssh.SFTPConnectionLost):
            raise exc  # the connection, not this file: stop (exit 255)
        # Name the side that failed: an SFTPError comes from the node, an OSError from here.
        remote = isinstance(exc, asyncssh.SFTPError)
        side = "dstpath" if remote == self.plan.upload else "srcpath"
        path = getattr(exc, side, b"")
        self.fail(
            path.decode("utf-8", "replace") if isinstance(path, bytes) else str(path), describe(exc)
        )

    async def _is_dir(self, local: bool, path: str) -> bool:
        return os.path.isdir(path) if local else bool(await self.sftp.isdir(path))

    def _dest_of(self, src: str, dest_is_dir: bool) -> str:
        """Where ``src``'s copy lands: in ``dest`` when it is a directory, else ``dest``."""
        if not dest_is_dir:
            return self.plan.dest
        if self.plan.upload:
            return posixpath.join(self.plan.dest, os.path.basename(src.rstrip(os.sep)))
        return os.path.join(self.plan.dest, posixpath.basename(src.rstrip("/")))

    async def run(self) -> None:
        """Copy every source; per-file failures land in :attr:`failures`."""
        import asyncssh

        plan = self.plan
        dest_is_dir = await self._is_dir(not plan.upload, plan.dest)
        if len(plan.sources) > 1 and not dest_is_dir:
            self.fail(plan.dest, "not a directory (several sources need a directory)")
            return
        copy = self.sftp.put if plan.upload else self.sftp.get
        for src in plan.sources:
            try:
                if not self.recurse and await self._is_dir(plan.upload, src):
                    self.fail(src, "is a directory (use -r to copy directories)")
                    continue
                modes = None if self.preserve else ModeFixer(self.sftp, plan.upload)
                dest = self._dest_of(src, dest_is_dir)
                if modes is not None:
                    await modes.before(dest)
                await copy(
                    src,
                    plan.dest,
                    recurse=self.recurse,
                    preserve=self.preserve,
                    # asyncssh skips holes when sparse: a file ending in one (a disk
                    # image, say) would arrive short. Copy every byte, as scp does.
                    sparse=False,
                    progress_handler=self.progress,
                    error_handler=self._on_error,
                )
                if modes is not None:
                    await modes.after(src, dest)
            except (asyncssh.SFTPConnectionLost, ConnectionError):
                raise
            except (OSError, asyncssh.SFTPError) as exc:
                self.fail(src, describe(exc))
            finally:
                if self.progress is not None:
                    self.progress.close()


def _quiet_orphans(loop: asyncio.AbstractEventLoop) -> None:
    """Drop "Task exception was never retrieved" for a lost connection.

    asyncssh's parallel SFTP requests each fail with the connection; we report
    it once (exit 255), not once per request in flight with a traceback.
    """
    import asyncssh

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not isinstance(context.get("exception"), (asyncssh.Error, ConnectionError)):
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


async def scp(
    hub: str, ident: UserIdentity, plan: Plan, recurse: bool, preserve: bool, quiet: bool
) -> int:
    """Copy as ``plan`` says; print one line per failure; return scp's exit status."""
    import asyncssh

    from tsh.progress import TerminalProgress
    from tsh.ssh import open_ssh

    progress = None if quiet or not os.isatty(2) else TerminalProgress(2)
    _quiet_orphans(asyncio.get_running_loop())
    conn = await open_ssh(hub, ident, plan.login, plan.node)
    try:
        try:
            sftp = await start_sftp(conn)
        except Refused as refused:
            for src in plan.sources:
                print(f"tsh: {src}: refused by the node: {refused}", file=sys.stderr)
            return 1
        copier = Copier(sftp, plan, recurse, preserve, progress)
        async with sftp:
            await copier.run()
    except (asyncssh.Error, ConnectionError) as exc:
        reason = printable(exc.reason if isinstance(exc, asyncssh.Error) else str(exc))
        raise NodeError(
            f"connection to {plan.node!r} lost ({reason}); run 'tsh ls' to see if it is online"
        ) from None
    finally:
        conn.close()
    for line in copier.failures:
        print(f"tsh: {line}", file=sys.stderr)
    return 1 if copier.failures else 0
