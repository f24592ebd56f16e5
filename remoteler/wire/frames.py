"""Frame encoding and strict decoding.

One websocket binary message carries one frame: a msgpack array whose first item
is the :class:`FrameType`. Layouts (see ``docs/wire-protocol.md``)::

    OPEN       [1, channel_id, kind, meta, initial_window]
    OPEN_OK    [2, channel_id, initial_window]
    OPEN_FAIL  [3, channel_id, code, reason]
    DATA       [4, channel_id, payload]
    WINDOW     [5, channel_id, increment]
    EOF        [6, channel_id]
    CLOSE      [7, channel_id]
    PING       [8, seq, payload]            payload: map or nil
    PONG       [9, seq]                     or [9, seq, hub_time] (clock=1 agents)
    GOAWAY     [10, code, reason]           or [10, code, reason, retry_after_ms]

:func:`decode_frame` checks every item's type and range and raises
:class:`ProtocolError`; it never lets a msgpack or type error escape.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from .codes import ErrorCode, FrameType
from .exceptions import ProtocolError
from .limits import Limits

__all__ = [
    "MAX_CHANNEL_ID",
    "MAX_KIND_LEN",
    "MAX_REASON_LEN",
    "MAX_RETRY_AFTER_MS",
    "CloseFrame",
    "DataFrame",
    "EofFrame",
    "Frame",
    "GoAwayFrame",
    "OpenFailFrame",
    "OpenFrame",
    "OpenOkFrame",
    "PingFrame",
    "PongFrame",
    "WindowFrame",
    "data_header",
    "decode_frame",
    "encode_frame",
]

MAX_CHANNEL_ID = 0xFFFFFFFF
MAX_WINDOW_VALUE = 0xFFFFFFFF
MAX_SEQ = 0xFFFFFFFFFFFFFFFF
MAX_CODE = 0xFFFF
MAX_KIND_LEN = 64
MAX_REASON_LEN = 1024
#: Largest GOAWAY retry-after (one hour): a peer cannot park an agent for longer.
MAX_RETRY_AFTER_MS = 3_600_000
#: Nesting allowed inside OPEN meta and PING payload values.
MAX_NESTING = 16


@dataclass(frozen=True, slots=True)
class OpenFrame:
    channel_id: int
    kind: str
    meta: dict[str, Any]
    initial_window: int


@dataclass(frozen=True, slots=True)
class OpenOkFrame:
    channel_id: int
    initial_window: int


@dataclass(frozen=True, slots=True)
class OpenFailFrame:
    channel_id: int
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class DataFrame:
    channel_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class WindowFrame:
    channel_id: int
    increment: int


@dataclass(frozen=True, slots=True)
class EofFrame:
    channel_id: int


@dataclass(frozen=True, slots=True)
class CloseFrame:
    channel_id: int


@dataclass(frozen=True, slots=True)
class PingFrame:
    seq: int
    payload: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class PongFrame:
    seq: int
    time: float | None = None
    """The answerer's wall clock (seconds since the epoch) when it answered; sent
    only to peers that asked for it (``clock=1``), so old agents see 2-item PONGs."""


@dataclass(frozen=True, slots=True)
class GoAwayFrame:
    code: int
    reason: str
    retry_after_ms: int | None = None
    """Milliseconds the receiver should wait before reconnecting; omitted on the wire if None."""


Frame = (
    OpenFrame
    | OpenOkFrame
    | OpenFailFrame
    | DataFrame
    | WindowFrame
    | EofFrame
    | CloseFrame
    | PingFrame
    | PongFrame
    | GoAwayFrame
)


# -- encoding ---------------------------------------------------------------


def _packb(items: list[Any]) -> bytes:
    out: bytes = msgpack.packb(items, use_bin_type=True)
    return out


def _uint_bytes(n: int) -> bytes:
    # msgpack's shortest unsigned encoding, as packb produces it.
    if n < 0x80:
        return bytes((n,))
    if n <= 0xFF:
        return b"\xcc" + bytes((n,))
    if n <= 0xFFFF:
        return struct.pack(">BH", 0xCD, n)
    return struct.pack(">BI", 0xCE, n)


def data_header(channel_id: int, length: int) -> bytes:
    """Bytes that precede a ``length``-byte payload in a DATA frame.

    ``data_header(c, len(p)) + p == encode_frame(DataFrame(c, p))``; the core
    joins it with buffered chunks so a payload is copied only once.
    """
    if length <= 0xFF:
        bin_header = struct.pack(">BB", 0xC4, length)
    elif length <= 0xFFFF:
        bin_header = struct.pack(">BH", 0xC5, length)
    else:
        bin_header = struct.pack(">BI", 0xC6, length)
    return b"\x93\x04" + _uint_bytes(channel_id) + bin_header


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame as the bytes of one websocket binary message."""
    match frame:
        case DataFrame(channel_id, payload):
            return data_header(channel_id, len(payload)) + payload
        case OpenFrame(channel_id, kind, meta, initial_window):
            return _packb([FrameType.OPEN, channel_id, kind, meta, initial_window])
        case OpenOkFrame(channel_id, initial_window):
            return _packb([FrameType.OPEN_OK, channel_id, initial_window])
        case OpenFailFrame(channel_id, code, reason):
            return _packb([FrameType.OPEN_FAIL, channel_id, int(code), reason])
        case WindowFrame(channel_id, increment):
            return _packb([FrameType.WINDOW, channel_id, increment])
        case EofFrame(channel_id):
            return _packb([FrameType.EOF, channel_id])
        case CloseFrame(channel_id):
            return _packb([FrameType.CLOSE, channel_id])
        case PingFrame(seq, payload):
            return _packb([FrameType.PING, seq, payload])
        case PongFrame(seq, stamp):
            items = [FrameType.PONG, seq] if stamp is None else [FrameType.PONG, seq, stamp]
            return _packb(items)
        case GoAwayFrame(code, reason, None):
            return _packb([FrameType.GOAWAY, int(code), reason])
        case GoAwayFrame(code, reason, retry_after_ms):
            return _packb([FrameType.GOAWAY, int(code), reason, retry_after_ms])
    raise TypeError(f"not a frame: {frame!r}")  # pragma: no cover


# -- decoding ---------------------------------------------------------------


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED_FRAME, message)


def _uint(value: object, what: str, low: int, high: int) -> int:
    # type() rather than isinstance(): bool is an int subclass and is not allowed.
    if type(value) is not int or not low <= value <= high:
        raise _malformed(f"{what} must be an integer in [{low}, {high}]")
    return value


def _str(value: object, what: str, min_len: int, max_len: int) -> str:
    if type(value) is not str or not min_len <= len(value) <= max_len:
        raise _malformed(f"{what} must be a string of {min_len}..{max_len} characters")
    return value


_SCALARS = (type(None), bool, int, float, str, bytes)


def _plain_map(value: object, what: str) -> dict[str, Any]:
    """Check ``value`` is a str-keyed map of plain msgpack values (no ext types)."""
    if type(value) is not dict or not all(type(k) is str for k in value):
        raise _malformed(f"{what} must be a map with string keys")
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if type(item) in _SCALARS:
            continue
        if depth >= MAX_NESTING:
            raise _malformed(f"{what} nests too deeply")
        if type(item) is list:
            stack.extend((v, depth + 1) for v in item)
        elif type(item) is dict:
            stack.extend((v, depth + 1) for v in item.values())
        else:
            raise _malformed(f"{what} holds an unsupported {type(item).__name__}")
    return value


def _wall_time(value: Any) -> float:
    """A finite, non-negative wall-clock time in seconds (PONG's hub time)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _malformed("pong time must be a number")
    if not 0 <= value < 1e11:  # also refuses NaN and infinities
        raise _malformed("pong time out of range")
    return float(value)


def _arity(items: list[Any], n: int, name: str) -> None:
    if len(items) != n:
        raise _malformed(f"{name} frame must have {n} items, got {len(items)}")


def decode_frame(message: bytes, limits: Limits) -> Frame:
    """Decode one websocket binary message into a frame.

    Raises :class:`ProtocolError` with FRAME_TOO_LARGE, MALFORMED_FRAME or
    UNKNOWN_FRAME_TYPE; the caller must then fail the tunnel with that code.
    """
    if len(message) > limits.max_frame_bytes:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"{len(message)} byte message exceeds {limits.max_frame_bytes}",
        )
    try:
        items = msgpack.unpackb(
            message,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_bin_len=limits.max_frame_bytes,
            max_str_len=limits.max_meta_bytes,
            max_array_len=limits.max_meta_bytes,
            max_map_len=limits.max_meta_bytes,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises ValueError subclasses and others
        raise _malformed(f"not a msgpack value: {type(exc).__name__}: {exc}") from None
    if type(items) is not list or not items:
        raise _malformed("frame must be a non-empty array")
    ftype = items[0]
    if type(ftype) is not int:
        raise _malformed("frame type must be an integer")
    if ftype == FrameType.DATA:  # hot path first
        _arity(items, 3, "DATA")
        payload = items[2]
        if type(payload) is not bytes:
            raise _malformed("DATA payload must be binary")
        return DataFrame(_uint(items[1], "channel id", 1, MAX_CHANNEL_ID), payload)
    if ftype == FrameType.WINDOW:
        _arity(items, 3, "WINDOW")
        return WindowFrame(
            _uint(items[1], "channel id", 1, MAX_CHANNEL_ID),
            _uint(items[2], "window increment", 1, MAX_WINDOW_VALUE),
        )
    if ftype == FrameType.OPEN:
        if len(message) > limits.max_meta_bytes:
            raise ProtocolError(
                ErrorCode.FRAME_TOO_LARGE,
                f"{len(message)} byte OPEN exceeds {limits.max_meta_bytes}",
            )
        _arity(items, 5, "OPEN")
        return OpenFrame(
            _uint(items[1], "channel id", 1, MAX_CHANNEL_ID),
            _str(items[2], "channel kind", 1, MAX_KIND_LEN),
            _plain_map(items[3], "channel meta"),
            _uint(items[4], "initial window", 0, MAX_WINDOW_VALUE),
        )
    if ftype == FrameType.OPEN_OK:
        _arity(items, 3, "OPEN_OK")
        return OpenOkFrame(
            _uint(items[1], "channel id", 1, MAX_CHANNEL_ID),
            _uint(items[2], "initial window", 0, MAX_WINDOW_VALUE),
        )
    if ftype == FrameType.OPEN_FAIL:
        _arity(items, 4, "OPEN_FAIL")
        return OpenFailFrame(
            _uint(items[1], "channel id", 1, MAX_CHANNEL_ID),
            _uint(items[2], "open failure code", 0, MAX_CODE),
            _str(items[3], "reason", 0, MAX_REASON_LEN),
        )
    if ftype == FrameType.EOF:
        _arity(items, 2, "EOF")
        return EofFrame(_uint(items[1], "channel id", 1, MAX_CHANNEL_ID))
    if ftype == FrameType.CLOSE:
        _arity(items, 2, "CLOSE")
        return CloseFrame(_uint(items[1], "channel id", 1, MAX_CHANNEL_ID))
    if ftype == FrameType.PING:
        _arity(items, 3, "PING")
        payload = items[2]
        return PingFrame(
            _uint(items[1], "ping seq", 0, MAX_SEQ),
            None if payload is None else _plain_map(payload, "heartbeat payload"),
        )
    if ftype == FrameType.PONG:
        if len(items) not in (2, 3):  # the hub's time is optional (docs/wire-protocol.md)
            raise _malformed(f"PONG frame must have 2 or 3 items, got {len(items)}")
        seq = _uint(items[1], "pong seq", 0, MAX_SEQ)
        return PongFrame(seq, _wall_time(items[2]) if len(items) == 3 else None)
    if ftype == FrameType.GOAWAY:
        if len(items) not in (3, 4):  # retry_after_ms is optional
            raise _malformed(f"GOAWAY frame must have 3 or 4 items, got {len(items)}")
        return GoAwayFrame(
            _uint(items[1], "error code", 0, MAX_CODE),
            _str(items[2], "reason", 0, MAX_REASON_LEN),
            _uint(items[3], "retry after", 0, MAX_RETRY_AFTER_MS) if len(items) == 4 else None,
        )
    raise ProtocolError(ErrorCode.UNKNOWN_FRAME_TYPE, f"unknown frame type {ftype}")
