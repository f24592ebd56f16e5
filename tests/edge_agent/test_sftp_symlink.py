"""SymlinkOrder without sockets: SYMLINKs swapped, everything else byte for byte."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.sftp_symlink import FXP_SYMLINK, MAX_PACKET, SymlinkOrder, needs_reorder


def _s(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


def _packet(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def _symlink(req: int, a: bytes, b: bytes) -> bytes:
    return _packet(FXP_SYMLINK, struct.pack(">I", req) + _s(a) + _s(b))


def test_symlink_swapped_others_untouched_fed_a_byte_at_a_time() -> None:
    write = _packet(6, struct.pack(">I", 1) + _s(b"h") + bytes(8) + _s(b"data"))
    stream = write + _symlink(2, b"/dst/link", b"target.txt") + write
    order = SymlinkOrder()
    out = b"".join(order.feed(stream[i : i + 1]) for i in range(len(stream)))
    assert out == write + _symlink(2, b"target.txt", b"/dst/link") + write


def test_malformed_symlink_and_unframeable_streams_pass_through() -> None:
    odd = _packet(FXP_SYMLINK, struct.pack(">I", 3) + _s(b"only-one"))
    order = SymlinkOrder()
    assert order.feed(odd) == odd
    huge = struct.pack(">I", MAX_PACKET + 1) + b"x" * 10
    assert order.feed(huge) == huge and order.passthrough
    assert order.feed(_symlink(4, b"a", b"b")) == _symlink(4, b"a", b"b")


def test_which_clients() -> None:
    assert needs_reorder("SSH-2.0-AsyncSSH_2.24.1")
    assert not needs_reorder("SSH-2.0-OpenSSH_9.2p1 Debian-2")
    assert not needs_reorder("")


@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=20))
def test_any_bytes_any_split_same_length_never_raises(data: bytes, cuts: list[int]) -> None:
    order = SymlinkOrder()
    out, pos = b"", 0
    for n in cuts:
        out += order.feed(data[pos : pos + n])
        pos += n
    out += order.feed(data[pos:])
    assert len(out) <= len(data)  # a partial packet may wait; nothing is invented
