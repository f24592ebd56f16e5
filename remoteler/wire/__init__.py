"""The tunnel wire protocol: a sans-I/O multiplexer with per-channel flow control.

:mod:`remoteler.wire.connection` is the protocol core (no asyncio);
:mod:`remoteler.wire.aio` pumps it over a ``websockets`` connection.
See ``docs/wire-protocol.md``.
"""

from .codes import ErrorCode, FrameType, OpenFailure
from .connection import ChannelState, Connection, Role, State
from .exceptions import (
    ChannelClosedError,
    ChannelOpenError,
    InvalidState,
    ProtocolError,
    TunnelClosed,
    WireError,
)
from .limits import Limits
from .sched import Priority

__all__ = [
    "ChannelClosedError",
    "ChannelOpenError",
    "ChannelState",
    "Connection",
    "ErrorCode",
    "FrameType",
    "InvalidState",
    "Limits",
    "OpenFailure",
    "Priority",
    "ProtocolError",
    "Role",
    "State",
    "TunnelClosed",
    "WireError",
]
