"""SYMLINK in the order OpenSSH's ``sftp-server`` reads it, for clients that send the draft's.

draft-ietf-secsh-filexfer-02 §6.10 puts ``linkpath`` before ``targetpath``;
OpenSSH's client and server both use the reverse, and asyncssh's client picks
the order from the SSH server's version string: to the agent (asyncssh) it
sends the draft's order, which OpenSSH's ``sftp-server`` would read backwards
(a link created at the target's name, or a refusal). When the agent runs that
server for such a client it swaps the two strings in each ``SSH_FXP_SYMLINK``
on the way in (:class:`SymlinkOrder`); the built-in server needs none of this,
it is told the client's version.

Sans-I/O: bytes in, bytes out, never raises; a stream it cannot frame is passed
through untouched from then on.
"""

from __future__ import annotations

import struct

#: SSH_FXP_SYMLINK (filexfer-02 §3).
FXP_SYMLINK = 20
#: Larger than any packet an SFTP client sends to OpenSSH's server (256 KiB); past it,
#: the stream is passed through unframed.
MAX_PACKET = 1 << 20
#: SSH client version strings whose SFTP client sends the draft's order to the agent.
DRAFT_ORDER_CLIENTS = ("AsyncSSH",)


def needs_reorder(client_version: str) -> bool:
    """Whether a client with this SSH version sends SYMLINK in the draft's order here."""
    return any(name in client_version for name in DRAFT_ORDER_CLIENTS)


def _swapped(packet: bytes) -> bytes:
    """``packet`` (type byte onwards) with a SYMLINK's two paths swapped; others as they are."""
    if len(packet) < 13 or packet[0] != FXP_SYMLINK:
        return packet
    (n1,) = struct.unpack_from(">I", packet, 5)
    first_end = 9 + n1
    if first_end + 4 > len(packet):
        return packet
    (n2,) = struct.unpack_from(">I", packet, first_end)
    if first_end + 4 + n2 != len(packet):
        return packet  # not two strings exactly: leave it to the server to refuse
    first, second = packet[5:first_end], packet[first_end:]
    return packet[:5] + second + first


class SymlinkOrder:
    """Feed the client's bytes (:meth:`feed`), pass on what it returns."""

    def __init__(self) -> None:
        self._buf = bytearray()
        #: set when the stream could not be framed: bytes pass untouched from then on
        self.passthrough = False

    def feed(self, data: bytes) -> bytes:
        """Whole packets seen so far, SYMLINKs swapped; a partial one waits for its rest."""
        if self.passthrough:
            return data
        self._buf += data
        out = bytearray()
        while len(self._buf) >= 4:
            (length,) = struct.unpack_from(">I", self._buf, 0)
            if length < 1 or length > MAX_PACKET:
                self.passthrough = True
                out += self._buf
                self._buf.clear()
                break
            if len(self._buf) < 4 + length:
                break
            packet = bytes(self._buf[4 : 4 + length])
            del self._buf[: 4 + length]
            out += struct.pack(">I", length) + _swapped(packet)
        return bytes(out)
