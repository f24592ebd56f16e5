"""Encoding and strict decoding of every frame type."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from remoteler.wire.codes import ErrorCode
from remoteler.wire.exceptions import ProtocolError
from remoteler.wire.frames import (
    MAX_REASON_LEN,
    MAX_RETRY_AFTER_MS,
    CloseFrame,
    DataFrame,
    EofFrame,
    Frame,
    GoAwayFrame,
    OpenFailFrame,
    OpenFrame,
    OpenOkFrame,
    PingFrame,
    PongFrame,
    WindowFrame,
    data_header,
    decode_frame,
    encode_frame,
)
from remoteler.wire.limits import Limits

LIMITS = Limits()

FRAMES: list[Frame] = [
    OpenFrame(1, "ssh", {"login": "pi", "port": 22, "labels": ["a", {"b": None}]}, 4 << 20),
    OpenFrame(2, "audit", {}, 0),
    OpenOkFrame(3, 65536),
    OpenFailFrame(5, 2, "unknown kind"),
    DataFrame(7, b"hello"),
    DataFrame(0xFFFFFFFF, b""),
    DataFrame(200, b"x" * 70000),
    WindowFrame(9, 1),
    EofFrame(11),
    CloseFrame(13),
    PingFrame(0, None),
    PingFrame(2**64 - 1, {"version": "1.0", "backlog": 3, "load": 0.5, "ok": True}),
    PongFrame(42),
    PongFrame(42, 1_797_000_000.25),
    GoAwayFrame(0, ""),
    GoAwayFrame(9, "GOING_AWAY"),
    GoAwayFrame(9, "hub restarting", 0),
    GoAwayFrame(9, "hub restarting", 3_600_000),
]


def pack(*items: Any) -> bytes:
    out: bytes = msgpack.packb(list(items), use_bin_type=True)
    return out


def assert_rejected(message: bytes, code: ErrorCode = ErrorCode.MALFORMED_FRAME) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_frame(message, LIMITS)
    assert info.value.code is code


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_round_trip(frame: Frame) -> None:
    assert decode_frame(encode_frame(frame), LIMITS) == frame


@given(
    st.integers(min_value=0, max_value=0xFFFF),
    st.text(max_size=MAX_REASON_LEN),
    st.none() | st.integers(min_value=0, max_value=MAX_RETRY_AFTER_MS),
)
def test_goaway_round_trip(code: int, reason: str, retry_after_ms: int | None) -> None:
    frame = GoAwayFrame(code, reason, retry_after_ms)
    message = encode_frame(frame)
    assert decode_frame(message, LIMITS) == frame
    # Omitted when None, so the frame is byte-identical to the 3-item form.
    assert len(msgpack.unpackb(message)) == (3 if retry_after_ms is None else 4)


@pytest.mark.parametrize("length", [0, 1, 255, 256, 65535, 65536, 300_000])
@pytest.mark.parametrize("channel_id", [1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1])
def test_data_fast_path_matches_msgpack(channel_id: int, length: int) -> None:
    payload = b"\xab" * length
    expected = pack(4, channel_id, payload)
    assert encode_frame(DataFrame(channel_id, payload)) == expected
    assert data_header(channel_id, length) + payload == expected


def test_encoding_is_a_msgpack_array_with_type_first() -> None:
    assert msgpack.unpackb(encode_frame(EofFrame(3))) == [6, 3]
    assert msgpack.unpackb(encode_frame(PingFrame(1, None))) == [8, 1, None]


@pytest.mark.parametrize(
    "message",
    [
        pack(4, True, b"x"),  # bool is not an int
        pack(True, 1, b"x"),
        pack(4, 0, b"x"),  # channel 0 is not valid
        pack(4, -1, b"x"),
        pack(4, 2**32, b"x"),
        pack(4, 1.0, b"x"),
        pack(4, "1", b"x"),
        pack(4, 1, "text"),  # payload must be bin
        pack(4, 1, b"x", b"y"),  # extra item
        pack(4, 1),  # missing item
        pack(5, 1, 0),  # window increment must be > 0
        pack(5, 1, -5),
        pack(5, 1, 2**32),
        pack(5, 1, False),
        pack(1, 1, "ssh", {}, -1),
        pack(1, 1, "", {}, 10),  # empty kind
        pack(1, 1, "k" * 65, {}, 10),
        pack(1, 1, b"ssh", {}, 10),
        pack(1, 1, "ssh", [], 10),
        pack(1, 1, "ssh", None, 10),
        pack(1, 1, "ssh", {b"bytes-key": 1}, 10),
        pack(1, 1, "ssh", {"a": msgpack.ExtType(5, b"x")}, 10),
        pack(1, 1, "ssh", {}),
        pack(2, 1),
        pack(2, 1, True),
        pack(3, 1, 1),
        pack(3, 1, 1, b"reason"),
        pack(3, 1, -1, "reason"),
        pack(3, 1, 1, "r" * 1025),
        pack(6, 1, 2),
        pack(6, 0),
        pack(7),
        pack(7, None),
        pack(8, 1),
        pack(8, -1, None),
        pack(8, 1, [1, 2]),
        pack(8, 1, {1: 2}),
        pack(9, "1"),
        pack(9, 1, "2"),  # the hub's time: a number (docs/wire-protocol.md)
        pack(9, 1, -1.0),
        pack(9, 1, float("nan")),
        pack(9, 1, float("inf")),
        pack(9, 1, True),
        pack(9, 1, 2.0, 3),
        pack(10, 0),
        pack(10, 0, None),
        pack(10, "x", "y"),
        pack(10, 9, "r", -1),  # retry_after_ms: a uint up to one hour
        pack(10, 9, "r", 3_600_001),
        pack(10, 9, "r", True),
        pack(10, 9, "r", 1.5),
        pack(10, 9, "r", "1000"),
        pack(10, 9, "r", None),  # omitted, not nil
        pack(10, 9, "r", 1000, 1),
        pack(),  # empty array
        pack("DATA", 1, b""),
        msgpack.packb(4),  # not an array
        msgpack.packb({"type": 4}),
        b"",  # truncated / garbage
        b"\x93\x04",
        b"\xc1",
        pack(6, 1) + b"\x00",  # trailing data
        b"\x91" * 5000,  # nesting bomb
    ],
)
def test_rejects_malformed(message: bytes) -> None:
    assert_rejected(message)


@pytest.mark.parametrize("ftype", [0, 11, 99, 2**16])
def test_rejects_unknown_type(ftype: int) -> None:
    assert_rejected(pack(ftype, 1), ErrorCode.UNKNOWN_FRAME_TYPE)


def test_rejects_deeply_nested_meta() -> None:
    meta: dict[str, Any] = {}
    inner = meta
    for _ in range(20):
        inner["a"] = {}
        inner = inner["a"]
    assert_rejected(pack(1, 1, "ssh", meta, 10))


def test_rejects_oversized_message() -> None:
    limits = Limits(max_frame_bytes=1024, max_data_chunk=512, max_meta_bytes=256)
    with pytest.raises(ProtocolError) as info:
        decode_frame(encode_frame(DataFrame(1, b"x" * 1100)), limits)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    # A big bin length announced in a short message is malformed, not allocated.
    with pytest.raises(ProtocolError) as info:
        decode_frame(b"\x93\x04\x01\xc6\x7f\xff\xff\xff", limits)
    assert info.value.code is ErrorCode.MALFORMED_FRAME


def test_rejects_oversized_open_meta() -> None:
    limits = Limits(max_meta_bytes=1024)
    message = encode_frame(OpenFrame(1, "ssh", {"blob": "x" * 1020}, 10))
    assert len(message) > 1024
    with pytest.raises(ProtocolError) as info:
        decode_frame(message, limits)
    assert info.value.code is ErrorCode.FRAME_TOO_LARGE
    assert decode_frame(message, LIMITS) == OpenFrame(1, "ssh", {"blob": "x" * 1020}, 10)
