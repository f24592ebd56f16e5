"""Numeric codes carried on the wire.

These values are part of the protocol: never renumber them, only append.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ErrorCode", "FrameType", "OpenFailure"]


class FrameType(IntEnum):
    """First item of every frame (see ``docs/wire-protocol.md``)."""

    OPEN = 1
    OPEN_OK = 2
    OPEN_FAIL = 3
    DATA = 4
    WINDOW = 5
    EOF = 6
    CLOSE = 7
    PING = 8
    PONG = 9
    GOAWAY = 10


class ErrorCode(IntEnum):
    """Why a tunnel ended; carried by GOAWAY and by :class:`ProtocolError`."""

    NORMAL = 0
    MALFORMED_FRAME = 1
    UNKNOWN_FRAME_TYPE = 2
    FRAME_TOO_LARGE = 3
    TOO_MANY_CHANNELS = 4
    UNKNOWN_CHANNEL = 5
    FLOW_CONTROL = 6
    CHANNEL_STATE = 7
    HEARTBEAT_TIMEOUT = 8
    GOING_AWAY = 9
    TEXT_MESSAGE = 10
    INTERNAL = 11


class OpenFailure(IntEnum):
    """Why a channel could not be opened; carried by OPEN_FAIL (like SSH's reason codes)."""

    REFUSED = 1
    UNKNOWN_KIND = 2
    RESOURCE_SHORTAGE = 3
    CONNECT_FAILED = 4
    PROHIBITED = 5
