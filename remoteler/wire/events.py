"""Events handed out by :meth:`Connection.events_received`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .codes import ErrorCode, OpenFailure

__all__ = [
    "ChannelClosed",
    "ChannelOpenFailed",
    "ChannelOpenRequested",
    "ChannelOpened",
    "ConnectionClosed",
    "DataReceived",
    "EofReceived",
    "Event",
    "HeartbeatReceived",
    "PongReceived",
    "WindowUpdated",
]


@dataclass(frozen=True, slots=True)
class ChannelOpenRequested:
    """The peer asks to open a channel: call ``accept_channel`` or ``reject_channel``."""

    channel_id: int
    """Id chosen by the peer."""
    kind: str
    """What the channel is for, e.g. ``"ssh"`` or ``"audit"``."""
    meta: dict[str, Any]
    """Kind-specific parameters sent by the peer (untrusted)."""


@dataclass(frozen=True, slots=True)
class ChannelOpened:
    """The peer accepted a channel we opened; data may now flow."""

    channel_id: int
    """Id returned by ``open_channel``."""


@dataclass(frozen=True, slots=True)
class ChannelOpenFailed:
    """The peer refused a channel we opened; the id is forgotten."""

    channel_id: int
    """Id returned by ``open_channel``."""
    code: OpenFailure | int
    """Reason code (an int if the peer sent a code we do not know)."""
    reason: str
    """Human-readable reason from the peer (untrusted)."""


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes arrived on a channel; call ``consume`` once the application has used them."""

    channel_id: int
    """Channel the bytes belong to."""
    data: bytes
    """The payload of one DATA frame."""


@dataclass(frozen=True, slots=True)
class EofReceived:
    """The peer will send no more data on this channel (it may still read)."""

    channel_id: int
    """Channel that reached end of input."""


@dataclass(frozen=True, slots=True)
class ChannelClosed:
    """The channel is fully closed on both sides; its id may be reused after this."""

    channel_id: int
    """Channel that closed."""


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """Our send window grew; the adapter should flush and wake blocked writers."""

    channel_id: int
    """Channel whose window grew."""


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    """The peer sent a PING (already answered with a PONG)."""

    payload: dict[str, Any] | None
    """Status the agent attached (labels, version, backlog...), untrusted."""


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The peer answered one of our PINGs."""

    seq: int
    """Sequence number of the PING answered."""
    rtt: float
    """Seconds between sending the PING and receiving this PONG."""
    peer_time: float | None = None
    """The peer's wall clock when it answered (hub time, docs/tunnels.md "Clock
    skew"), or None if it sent none (an older hub, or not asked for)."""


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The tunnel is closed; this is the last event. Close the websocket next."""

    code: ErrorCode
    """Why it closed."""
    reason: str
    """Detail for logs (local detail if we failed it, the peer's text if it did)."""
    by_peer: bool
    """True if the peer sent GOAWAY or the transport went away under us."""
    retry_after: float | None = None
    """Seconds the peer asked us to wait before reconnecting (its GOAWAY), or None."""


Event = (
    ChannelOpenRequested
    | ChannelOpened
    | ChannelOpenFailed
    | DataReceived
    | EofReceived
    | ChannelClosed
    | WindowUpdated
    | HeartbeatReceived
    | PongReceived
    | ConnectionClosed
)
