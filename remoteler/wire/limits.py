"""Explicit limits of a tunnel. Both ends normally use the defaults."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]

#: Bytes a DATA frame adds around its payload (array, type, channel id, bin header).
DATA_OVERHEAD = 16


@dataclass(frozen=True)
class Limits:
    """Limits enforced on what the peer sends and honoured in what we send."""

    max_frame_bytes: int = 1 << 20
    """Largest encoded websocket message accepted (FRAME_TOO_LARGE above it)."""
    max_data_chunk: int = 256 * 1024
    """Largest DATA payload we send (a channel alone on the tunnel sends this much per frame)."""
    data_quantum: int = 16 * 1024
    """Payload bytes per turn when several channels have data (capped at ``max_data_chunk``):
    a keystroke waits behind at most this much of another channel. Local only."""
    max_channels: int = 1024
    """Channels each side may have open at once (counted per opening side)."""
    initial_window: int = 4 << 20
    """Receive window we grant on each channel, and the size it is topped back up to."""
    max_window: int = 64 << 20
    """Largest send window (and initial window) the peer may grant us."""
    max_meta_bytes: int = 16 * 1024
    """Largest encoded OPEN frame (kind + meta) accepted."""
    heartbeat_interval: float = 30.0
    """Seconds between PINGs; 0 disables heartbeats and the liveness check."""
    allowed_misses: int = 3
    """The tunnel fails after ``heartbeat_interval * allowed_misses`` s of silence."""
    send_heartbeats: bool = False
    """True on the dialing agent; the hub only answers PINGs and watches for silence."""
    max_queued_control: int = 4096
    """Control frames (PONG, WINDOW, OPEN_OK, CLOSE...) queued and not yet taken by
    :meth:`~remoteler.wire.connection.Connection.messages_to_send`. Input that arrives
    while this many wait fails the tunnel with ``FLOW_CONTROL``: a peer that sends
    PINGs and reads none of our PONGs cannot pile them up. The asyncio adapter stops
    reading at a quarter of it until its writer catches up, so a slow but honest
    peer never gets there."""

    def __post_init__(self) -> None:
        if self.max_data_chunk < 1 or self.max_data_chunk + DATA_OVERHEAD > self.max_frame_bytes:
            raise ValueError("max_data_chunk must be >= 1 and fit in max_frame_bytes")
        if self.data_quantum < 1:
            raise ValueError("data_quantum must be >= 1")
        if self.max_channels < 1:
            raise ValueError("max_channels must be >= 1")
        if not 2 <= self.initial_window <= self.max_window <= 0xFFFFFFFF:
            raise ValueError("need 2 <= initial_window <= max_window <= 2**32 - 1")
        if self.max_meta_bytes < 64 or self.max_meta_bytes > self.max_frame_bytes:
            raise ValueError("max_meta_bytes must be in [64, max_frame_bytes]")
        if self.max_queued_control < 4:
            raise ValueError("max_queued_control must be >= 4")
        if self.heartbeat_interval < 0 or self.allowed_misses < 1:
            raise ValueError("heartbeat_interval must be >= 0 and allowed_misses >= 1")
