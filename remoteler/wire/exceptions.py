"""Errors raised by :mod:`remoteler.wire`.

.. code-block:: text

    WireError(Exception)
    ├── ProtocolError(code, message)     the peer violated the protocol; carries the wire code
    ├── InvalidState(message)            local misuse, e.g. sending on a closed channel
    ├── ChannelOpenError(code, reason)   the peer refused to open a channel (OPEN_FAIL)
    ├── ChannelClosedError               write on a closed channel (asyncio adapter)
    └── TunnelClosed(code, reason)       the tunnel is gone (asyncio adapter)

:class:`ProtocolError` never escapes :class:`~remoteler.wire.connection.Connection`:
the core turns it into ``fail(code, ...)``, which sends a GOAWAY carrying only the
code's generic name to the peer and keeps the detailed message for local logs.
"""

from __future__ import annotations

from .codes import ErrorCode, OpenFailure

__all__ = [
    "ChannelClosedError",
    "ChannelOpenError",
    "InvalidState",
    "ProtocolError",
    "TunnelClosed",
    "WireError",
]


class WireError(Exception):
    """Base class of every error raised by :mod:`remoteler.wire`."""


class ProtocolError(WireError):
    """The peer sent something the protocol forbids.

    ``code`` is the :class:`ErrorCode` the tunnel is failed with; ``message`` is
    local detail for logs and is never sent to the peer.
    """

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class InvalidState(WireError):
    """A local command is not allowed in the current state (a bug in the caller)."""


class ChannelOpenError(WireError):
    """The peer answered OPEN with OPEN_FAIL, or the channel could not be opened locally."""

    def __init__(self, code: OpenFailure | int, reason: str) -> None:
        name = code.name if isinstance(code, OpenFailure) else str(code)
        super().__init__(f"{name}: {reason}" if reason else name)
        self.code = code
        self.reason = reason


class ChannelClosedError(WireError):
    """Writing to a channel that is closed, half-closed by us, or whose tunnel is gone."""


class TunnelClosed(WireError):
    """The tunnel is closed; ``code`` and ``reason`` say why."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(f"{code.name}: {reason}" if reason else code.name)
        self.code = code
        self.reason = reason
