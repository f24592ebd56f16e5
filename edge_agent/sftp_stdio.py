"""The built-in SFTP server: asyncssh's SFTP server on a pair of file descriptors.

Devices without OpenSSH (BusyBox, Dropbear, Yocto images) have no
``sftp-server``; this program takes its place. The agent starts it exactly as
it would start ``sftp-server`` (:mod:`edge_agent.sftp`: one child per SFTP
session, as the login's OS user when the agent runs as root, its bytes watched
for ``file.transfer`` events), so every file operation is judged by the kernel
for that user. asyncssh's own SFTP server does the protocol; here are only the
few lines that run it over a pair of pipes instead of an SSH channel, and the
limits OpenSSH's ``sftp-server`` keeps (256 KiB packets), so a client cannot
make the child buffer more than that per request and the agent's packet watcher
always understands the stream.

Version 3 only (draft-ietf-secsh-filexfer-02, what OpenSSH speaks), whatever the
client offers: the watcher parses that version.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from asyncssh.constants import FXP_OPEN, FXP_OPENDIR
from asyncssh.logging import SSHLogger, logger
from asyncssh.packet import SSHPacket
from asyncssh.sftp import SFTPFailure, SFTPLimits, SFTPServer, SFTPServerHandler

#: Largest SFTP packet accepted or advertised, as OpenSSH's sftp-server (SFTP_MAX_MSG_LENGTH).
MAX_PACKET = 256 * 1024
#: Largest read or write payload advertised (limits@openssh.com), as sftp-server's.
MAX_DATA = MAX_PACKET - 1024
#: Open file and directory handles per session, at most (OpenSSH's sftp-server is held
#: to its descriptor limit, about 1024; asyncssh's server keeps a directory handle
#: without a descriptor, so nothing else would bound them). Advertised in limits@openssh.com.
MAX_HANDLES = 512
#: The only protocol version served (the agent's watcher parses this one).
SFTP_VERSION = 3


class _Channel:
    """The little of an SSH channel that asyncssh's SFTP code asks for."""

    def __init__(self) -> None:
        self.closing = False
        self.logger: SSHLogger = logger.get_child("sftp_child")

    def is_closing(self) -> bool:
        return self.closing

    def get_environment(self) -> dict[str, str]:
        return {}


class PipeReader:
    """Stands in for asyncssh's ``SSHReader`` on the client's requests.

    Before each packet it waits until the replies have drained (so a client that
    sends requests but reads no replies stops being read: the pipe, then the
    SSH window, push back), and refuses a length past :data:`MAX_PACKET`.
    """

    def __init__(
        self, reader: asyncio.StreamReader, writer: PipeWriter, client_version: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._client_version = client_version
        self._want_length = True
        self.logger = writer.channel.logger

    async def readexactly(self, n: int) -> bytes:
        if self._want_length:
            await self._writer.drain()
        data = await self._reader.readexactly(n)
        if self._want_length and int.from_bytes(data, "big") > MAX_PACKET:
            raise EOFError("packet too long")  # as sftp-server: the session ends
        self._want_length = not self._want_length
        return data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        # asyncssh swaps SYMLINK's arguments for OpenSSH clients (their order is reversed).
        return self._client_version if name == "client_version" else default


class PipeWriter:
    """Stands in for asyncssh's ``SSHWriter`` on a file descriptor (a pipe or a socket).

    Not asyncio's write-pipe transport: on a socket that is also our stdin (as
    ``sftp -D`` hands us) it watches the descriptor for reads to notice a close,
    and takes the client's first request for one.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        os.set_blocking(fd, False)
        self._buf = bytearray()
        self._drained = asyncio.Event()
        self._drained.set()
        self._broken = False
        self.channel = _Channel()

    def write(self, data: bytes) -> None:
        if self.channel.closing or self._broken:
            return
        self._buf += data
        self._flush()

    def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._buf:
                del self._buf[: os.write(self._fd, self._buf)]
        except BlockingIOError:
            pass
        except OSError:  # the reader went away: nothing more can be said
            self._broken = True
            self._buf.clear()
        if self._buf:
            self._drained.clear()
            loop.add_writer(self._fd, self._flush)
        else:
            loop.remove_writer(self._fd)
            self._drained.set()

    async def drain(self) -> None:
        await self._drained.wait()
        if self._broken:
            raise EOFError("output closed")

    def close(self) -> None:
        self.channel.closing = True


class Server(SFTPServer):
    """asyncssh's local-filesystem SFTP server, reads capped at :data:`MAX_DATA`."""

    def read(self, file_obj: object, offset: int, size: int) -> Any:
        return super().read(file_obj, offset, min(size, MAX_DATA))


async def _limits(handler: SFTPServerHandler, packet: SSHPacket) -> SFTPLimits:
    """limits@openssh.com answered with OpenSSH's sftp-server limits, not asyncssh's 4 MiB."""
    packet.check_end()
    return SFTPLimits(MAX_PACKET, MAX_DATA, MAX_DATA, MAX_HANDLES)


def _open_handles(handler: SFTPServerHandler) -> int:
    return len(handler._file_handles) + len(handler._dir_handles)


async def _open(handler: SFTPServerHandler, packet: SSHPacket) -> bytes:
    """OPEN, refused (before the file is opened) at :data:`MAX_HANDLES` open handles."""
    if _open_handles(handler) >= MAX_HANDLES:
        raise SFTPFailure(f"too many open handles (at most {MAX_HANDLES})")
    return await SFTPServerHandler._process_open(handler, packet)


async def _opendir(handler: SFTPServerHandler, packet: SSHPacket) -> bytes:
    """OPENDIR, refused at :data:`MAX_HANDLES` open handles."""
    if _open_handles(handler) >= MAX_HANDLES:
        raise SFTPFailure(f"too many open handles (at most {MAX_HANDLES})")
    return await SFTPServerHandler._process_opendir(handler, packet)


class Handler(SFTPServerHandler):
    """asyncssh's server handler with OpenSSH's limits, advertised and kept."""

    _packet_handlers = {
        **SFTPServerHandler._packet_handlers,
        FXP_OPEN: _open,
        FXP_OPENDIR: _opendir,
        b"limits@openssh.com": _limits,
    }


async def serve(
    reader: asyncio.StreamReader,
    out: PipeWriter,
    client_version: str = "",
    chroot: str | None = None,
) -> None:
    """Serve one SFTP session from ``reader`` to ``out`` until the client's EOF;
    ``chroot``: confine paths to that directory (asyncssh's own mapping; tests)."""
    handler = Handler(
        Server(out.channel, chroot.encode() if chroot else None),  # type: ignore[arg-type]
        PipeReader(reader, out, client_version),  # type: ignore[arg-type]
        out,  # type: ignore[arg-type]
        SFTP_VERSION,
    )
    try:
        await handler.run()
    except EOFError:  # before or inside INIT (asyncssh reads it outside its loop): left
        return
    with contextlib.suppress(EOFError):
        await out.drain()


async def serve_stdio(client_version: str = "") -> None:
    """Serve one SFTP session on this process's stdin and stdout."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 * MAX_PACKET)
    stdin = os.fdopen(os.dup(0), "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stdin)
    try:
        await serve(reader, PipeWriter(1), client_version)
    finally:
        transport.close()
