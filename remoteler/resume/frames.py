"""Frames of the resumable stream (docs/resume.md): encoding and an incremental parser.

The resumable stream runs *inside* the byte stream that carries an SSH connection
between ``tsh`` and the device (a websocket to the hub, then a tunnel channel), so
message boundaries are not kept: every frame is ``type (u8) | length (u32, big
endian) | payload`` and the parser takes bytes in any split.

No I/O here, and nothing from asyncssh: the agent imports it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack

__all__ = [
    "HEADER",
    "MAX_CONTROL",
    "MAX_DATA",
    "Frame",
    "FrameParser",
    "FrameType",
    "ResumeProtocolError",
    "decode_control",
    "encode",
    "encode_control",
]

HEADER = struct.Struct(">BI")
#: Largest DATA payload a sender cuts; a receiver refuses anything larger.
MAX_DATA = 256 * 1024
#: Largest control payload (HELLO, RESUME, RESUMED, REFUSE).
MAX_CONTROL = 4096


class FrameType(IntEnum):
    """First byte of each frame. Never renumber, only append."""

    HELLO = 1
    """device -> client, first frame of a new resumable session"""
    RESUME = 2
    """client -> device, first frame on a new link: which session, proof, received count"""
    RESUMED = 3
    """device -> client: the device's received count and the next resume token"""
    DATA = 4
    """payload bytes, numbered implicitly by their order in the stream"""
    ACK = 5
    """u64: bytes (EOF counted as one) the sender of the ACK has received"""
    EOF = 6
    """the sender's stream ends (counts as one byte, so it is replayed like data)"""
    REFUSE = 7
    """device -> client: a resume is refused; payload is a UTF-8 reason, final"""


CONTROL = (FrameType.HELLO, FrameType.RESUME, FrameType.RESUMED, FrameType.REFUSE)
_ACK = struct.Struct(">Q")


class ResumeProtocolError(Exception):
    """The peer sent something that is not a valid frame here: drop the link."""


@dataclass(frozen=True)
class Frame:
    type: FrameType
    payload: bytes


def encode(ftype: FrameType, payload: bytes = b"") -> bytes:
    return HEADER.pack(ftype, len(payload)) + payload


def encode_ack(count: int) -> bytes:
    return encode(FrameType.ACK, _ACK.pack(count))


def decode_ack(payload: bytes) -> int:
    if len(payload) != _ACK.size:
        raise ResumeProtocolError("ACK payload is not 8 bytes")
    (count,) = _ACK.unpack(payload)
    return int(count)


def encode_control(ftype: FrameType, fields: dict[str, Any]) -> bytes:
    return encode(ftype, msgpack.packb(fields, use_bin_type=True))


def decode_control(frame: Frame) -> dict[str, Any]:
    """A control frame's msgpack map (string keys); anything else is a protocol error."""
    if frame.type == FrameType.REFUSE:
        return {"reason": frame.payload.decode("utf-8", "replace")}
    try:
        value = msgpack.unpackb(
            frame.payload,
            raw=False,
            strict_map_key=True,
            max_bin_len=MAX_CONTROL,
            max_str_len=MAX_CONTROL,
            max_array_len=16,
            max_map_len=16,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several types for bad input
        raise ResumeProtocolError(f"{frame.type.name} is not msgpack ({exc})") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ResumeProtocolError(f"{frame.type.name} is not a map")
    return value


class FrameParser:
    """Bytes in, whole frames out; bounded by the largest legal frame."""

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[Frame]:
        """Whole frames in ``self``'s leftovers plus ``data``; one copy per payload
        (a read that holds whole frames, the common case, is sliced, not buffered)."""
        if self._buf:
            self._buf += data
            buf: bytes = bytes(self._buf)
            self._buf.clear()
        else:
            buf = bytes(data)
        view = memoryview(buf)
        frames: list[Frame] = []
        pos, size = 0, len(buf)
        while size - pos >= HEADER.size:
            ftype, length = HEADER.unpack_from(buf, pos)
            try:
                kind = FrameType(ftype)
            except ValueError:
                raise ResumeProtocolError(f"unknown frame type {ftype}") from None
            limit = MAX_DATA if kind == FrameType.DATA else MAX_CONTROL
            if length > limit:
                raise ResumeProtocolError(f"{kind.name} of {length} bytes (at most {limit})")
            end = pos + HEADER.size + length
            if end > size:
                break
            frames.append(Frame(kind, bytes(view[pos + HEADER.size : end])))
            pos = end
        if pos < size:
            self._buf += view[pos:]
        return frames
