"""The ``sftp`` subsystem: an SFTP server run as the login's user.

By default the server is the agent's own (``python -I -m edge_agent.sftp_child``,
:mod:`edge_agent.sftp_stdio`), so devices without OpenSSH serve ``sftp`` and
``scp`` too; ``--sftp-server PATH`` runs OpenSSH's ``sftp-server`` instead.
Either is one process per SFTP session, started by
:class:`~edge_agent.session.CommandSession` as the login's OS user (the
built-in one, started as root, switches to it itself once loaded), so the file
operations are exactly as permitted as a shell's. The agent only watches the
SFTP packets going by (draft-ietf-secsh-filexfer-02, the version OpenSSH speaks)
to write one ``file.transfer`` audit event per file closed: path, bytes moved,
direction.
Modern ``scp`` uses SFTP, so it is covered too; legacy ``scp -O`` runs
``scp -t``/``-f`` as an ordinary command, checked against the same permission
but audited as a command.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

from edge_agent.audit import AgentAudit, SessionAudit
from edge_agent.authz import connection_permissions
from edge_agent.session import CommandSession
from edge_agent.sftp_config import BUILTIN, sftp_server
from edge_agent.sftp_symlink import SymlinkOrder, needs_reorder
from remoteler.audit.events import EventType
from remoteler.filetransfer import FILE_TRANSFER_REFUSED, SFTP_SUBSYSTEM, is_legacy_scp
from remoteler.text import printable

log = logging.getLogger("remoteler.agent.sftp")

#: The client's SSH version string passed to the built-in server is cut to this.
CLIENT_VERSION_MAX = 255

# SFTP packet types (filexfer-02 §3)
FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE = 3, 4, 5, 6
FXP_STATUS, FXP_HANDLE, FXP_DATA = 101, 102, 103
FXF_WRITE = 0x02
#: Larger than any packet OpenSSH sends (its limit is 256 KiB); past it we stop watching.
MAX_PACKET = 1 << 20


@dataclass(frozen=True)
class FileTransfer:
    """One file closed after data moved through the SFTP session."""

    #: the path as the client named it (relative paths are from the login's home)
    path: str
    #: bytes written (upload) or read (download) through this open handle
    size: int
    #: "upload" (client to device) or "download"
    direction: str


@dataclass
class _Open:
    path: str
    upload: bool
    size: int = 0


def _string(buf: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from(">I", buf, pos)
    end = pos + 4 + n
    if end > len(buf):
        raise ValueError("truncated string")
    return buf[pos + 4 : end], end


@dataclass
class SftpWatcher:
    """Sans-I/O: feed both directions of an SFTP stream, collect :class:`FileTransfer`.

    Never raises on bad input: a stream it cannot parse is no longer watched
    (``broken``), and the transfer goes on since ``sftp-server`` judges it.
    """

    broken: bool = False
    _bufs: tuple[bytearray, bytearray] = field(default_factory=lambda: (bytearray(), bytearray()))
    _opening: dict[int, tuple[str, bool]] = field(default_factory=dict)
    _reading: dict[int, bytes] = field(default_factory=dict)
    _handles: dict[bytes, _Open] = field(default_factory=dict)
    _events: list[FileTransfer] = field(default_factory=list)

    def client_data(self, data: bytes) -> None:
        self._feed(0, data)

    def server_data(self, data: bytes) -> None:
        self._feed(1, data)

    def events_received(self) -> list[FileTransfer]:
        events, self._events = self._events, []
        return events

    def close(self) -> list[FileTransfer]:
        """The session ended: files still open count as transferred as far as they went."""
        for handle in list(self._handles):
            self._closed(handle)
        return self.events_received()

    def _feed(self, side: int, data: bytes) -> None:
        if self.broken:
            return
        buf = self._bufs[side]
        buf += data
        while len(buf) >= 5:
            (length,) = struct.unpack_from(">I", buf, 0)
            if length < 1 or length > MAX_PACKET:
                self._break()
                return
            if len(buf) < 4 + length:
                return
            packet = bytes(buf[4 : 4 + length])
            del buf[: 4 + length]
            try:
                (self._client if side == 0 else self._server)(packet)
            except (ValueError, struct.error):
                self._break()
                return

    def _break(self) -> None:
        self.broken = True
        for buf in self._bufs:
            buf.clear()

    def _client(self, p: bytes) -> None:
        kind = p[0]
        if kind not in (FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE):
            return
        (req,) = struct.unpack_from(">I", p, 1)
        if kind == FXP_OPEN:
            name, pos = _string(p, 5)
            (flags,) = struct.unpack_from(">I", p, pos)
            self._opening[req] = (name.decode("utf-8", "replace"), bool(flags & FXF_WRITE))
            return
        handle, pos = _string(p, 5)
        if kind == FXP_CLOSE:
            self._closed(handle)
        elif kind == FXP_READ and handle in self._handles:
            self._reading[req] = handle
        elif kind == FXP_WRITE and handle in self._handles:
            data, _ = _string(p, pos + 8)
            self._handles[handle].size += len(data)

    def _server(self, p: bytes) -> None:
        kind = p[0]
        if kind not in (FXP_STATUS, FXP_HANDLE, FXP_DATA):
            return
        (req,) = struct.unpack_from(">I", p, 1)
        if kind == FXP_HANDLE and req in self._opening:
            path, upload = self._opening.pop(req)
            handle, _ = _string(p, 5)
            self._handles[handle] = _Open(path, upload)
        elif kind == FXP_DATA and req in self._reading:
            data, _ = _string(p, 5)
            found = self._handles.get(self._reading.pop(req))
            if found is not None:
                found.size += len(data)
        else:  # a STATUS answers (and ends) any request
            self._opening.pop(req, None)
            self._reading.pop(req, None)

    def _closed(self, handle: bytes) -> None:
        found = self._handles.pop(handle, None)
        if found is not None and (found.upload or found.size):
            direction = "upload" if found.upload else "download"
            self._events.append(FileTransfer(found.path, found.size, direction))


class SftpAudit(SessionAudit):
    """A session's audit for ``sftp``: start and end, a ``file.transfer`` per file, no recording.

    The bytes are file contents, not a terminal: recording them would copy every
    transferred file into the audit log.
    """

    def __init__(self, audit: AgentAudit, user: str, login: str, session_id: str) -> None:
        super().__init__(audit, user, login, session_id, "sftp", False)
        self.watcher = SftpWatcher()

    def input(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.watcher.client_data(data)
        self._emit(self.watcher.events_received())

    def output(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.watcher.server_data(data)
        self._emit(self.watcher.events_received())

    def _emit(self, transfers: list[FileTransfer]) -> None:
        for t in transfers:
            self.audit.emit_nowait(
                EventType.FILE_TRANSFER, **self.who, path=t.path, size=t.size, direction=t.direction
            )

    async def start(self) -> None:
        self.audit.check_room()
        await self.audit.emit(EventType.SESSION_START, **self.who, command="sftp", pty=False)
        self.opened()

    async def end(self, exit_status: int | None) -> None:
        self._emit(self.watcher.close())
        if self.watcher.broken:
            log.warning("sftp stream not understood; file events incomplete", extra=self.who)
        self.command = None  # no exec event: the subsystem is not a command the user typed
        self.recorder.flush()
        await super().end(exit_status)


class _SftpAgentAudit(AgentAudit):
    """Hands :class:`CommandSession` an :class:`SftpAudit` instead of a recorded session."""

    def __init__(self, base: AgentAudit) -> None:
        super().__init__(base.outbox, base.node_id, base.clock)

    def session(
        self,
        user: str,
        login: str,
        session_id: str,
        command: str | None,
        pty: bool,
        via: str = "",
    ) -> SessionAudit:
        return SftpAudit(self, user, login, session_id)


def builtin_argv(client_version: str, user: str | None) -> list[str]:
    """The command line of the built-in server: this interpreter, isolated (``-I``:
    no ``PYTHON*`` variables, no user site, not the working directory on the
    module path); ``user``: the child, started as root, becomes that account
    itself once loaded (the interpreter may live where the login cannot read)."""
    argv = [sys.executable, "-I", "-m", "edge_agent.sftp_child"]
    if user is not None:
        argv += ["--user", user]
    if client_version:
        argv += ["--client-version", printable(client_version, CLIENT_VERSION_MAX)]
    return argv


class NodeSession(CommandSession):
    """A session channel that also serves the ``sftp`` subsystem (RFC 4254 §6.5)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refusal: str | None = None
        self._builtin = False
        #: set for OpenSSH's server and a client sending SYMLINK in the draft's order
        self._reorder: SymlinkOrder | None = None

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != SFTP_SUBSYSTEM:
            return False
        server = sftp_server()
        if not self._file_transfer_allowed():
            self._refusal = FILE_TRANSFER_REFUSED
        elif server != BUILTIN and not os.access(server, os.X_OK):
            self._refusal = f"sftp is not available on this device ({server} is missing)"
        else:
            if server == BUILTIN:
                self._builtin = True
            else:
                self._command = server  # through the login's shell, as sshd runs it
                if needs_reorder(self._client_version()):
                    self._reorder = SymlinkOrder()
            if self._audit is not None:
                self._audit = _SftpAgentAudit(self._audit)
        # Accepted even when refused, so the client shows our reason, not a bare failure.
        return True

    def _spawn_args(self) -> tuple[list[str], dict[str, Any]]:
        """As any command's (the login's environment, home, a new session), but the
        built-in server is started directly, not through the login's shell (a login
        whose shell is ``nologin`` still transfers files, as with sshd's
        ``internal-sftp``), and as root it switches to the login itself
        (:mod:`edge_agent.sftp_child` ``--user``), with the same account and groups."""
        argv, kwargs = super()._spawn_args()
        if not self._builtin:
            return argv, kwargs
        user = None
        if "user" in kwargs:  # the agent runs as root
            user = self.login
            kwargs.pop("user")
            kwargs.pop("group", None)
            kwargs.pop("extra_groups", None)
        return builtin_argv(self._client_version(), user), kwargs

    def _client_version(self) -> str:
        return str(self._chan.get_connection().get_extra_info("client_version", "") or "")

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self._reorder is not None:
            data = self._reorder.feed(data)
            if not data:
                return  # part of a packet: the rest completes it
        super().data_received(data, datatype)

    def exec_requested(self, command: str) -> bool:
        """Legacy ``scp -O`` runs ``scp -t``/``scp -f`` here: same permission as sftp."""
        if is_legacy_scp(command) and not self._file_transfer_allowed():
            self._refusal = FILE_TRANSFER_REFUSED
        return super().exec_requested(command)

    def _file_transfer_allowed(self) -> bool:
        return connection_permissions(self._chan.get_connection()).file_transfer

    def session_started(self) -> None:
        if self._refusal is None:
            super().session_started()
            return
        log.info("sftp refused: %s", self._refusal, extra={"login": self.login})
        self._chan.write_stderr(f"remoteler: {self._refusal}\r\n".encode())
        self._chan.exit(1)
