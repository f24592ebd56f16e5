"""A deadline on the peer's answer to the hub's TLS flight, not only on the handshake.

``loop.connect_accepted_socket(ssl_handshake_timeout=...)`` bounds a whole
handshake: a peer that sends a ClientHello and goes silent keeps its
connection (and in :mod:`hub.net.listener` its handshake permit) for all of it.
What a live client needs is much less: once the hub has sent its flight
(ServerHello .. Finished in TLS 1.3, with the CertificateRequest), the client
has one round trip and one signature to do. :class:`HandshakeDeadline` is the
sans-I/O rule (time passed in); :class:`WatchedContext` is the thin adapter
that tells it when a flight went out: asyncio's SSLProtocol only ever calls
``wrap_bio`` on the context it is given, so a per-connection wrapper sees each
``do_handshake`` and the outgoing BIO it fills.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HandshakeDeadline", "WatchedContext"]


@dataclass(slots=True)
class HandshakeDeadline:
    """When a TLS handshake in progress is to be given up."""

    #: when the handshake started (the ClientHello is already received)
    started: float
    #: seconds the peer has to answer each flight of ours
    reply_timeout: float
    #: seconds for the whole handshake, whatever the flights
    total_timeout: float
    #: when our last flight was handed to the socket; None before the first
    flight_at: float | None = None
    #: flights sent (2 after a HelloRetryRequest)
    flights: int = 0
    #: the handshake completed
    done: bool = field(default=False)

    def flight_sent(self, now: float) -> None:
        self.flight_at = now
        self.flights += 1

    def deadline(self) -> float:
        """The time after which the handshake is given up, unless done by then."""
        total = self.started + self.total_timeout
        if self.flight_at is None:
            return total
        return min(total, self.flight_at + self.reply_timeout)

    def expired(self, now: float) -> bool:
        return not self.done and now >= self.deadline()

    def why(self) -> str:
        """Why an expired handshake was given up (for the drop summary)."""
        if self.flight_at is not None and self.deadline() < self.started + self.total_timeout:
            return "no reply to our flight"
        return "timed out"


class _WatchedSSLObject:
    """An ``ssl.SSLObject`` that reports each flight it produces to a deadline."""

    __slots__ = ("_clock", "_deadline", "_obj", "_outgoing", "read", "write")

    def __init__(
        self,
        obj: ssl.SSLObject,
        outgoing: ssl.MemoryBIO,
        deadline: HandshakeDeadline,
        clock: Callable[[], float],
    ) -> None:
        self._obj = obj
        self._outgoing: ssl.MemoryBIO | None = outgoing
        self._deadline: HandshakeDeadline | None = deadline
        self._clock: Callable[[], float] | None = clock
        # The data path: SSLProtocol calls these per record for the connection's life,
        # so they are the real object's own methods, not a frame of ours around each.
        self.read = obj.read
        self.write = obj.write

    def do_handshake(self) -> None:
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            # Bytes waiting in the outgoing BIO now are a flight: SSLProtocol writes
            # them to the socket before it returns to the loop.
            out, deadline, clock = self._outgoing, self._deadline, self._clock
            if deadline is not None and out is not None and clock is not None and out.pending:
                deadline.flight_sent(clock())
            raise
        if self._deadline is not None:
            self._deadline.done = True
        self._outgoing = self._deadline = self._clock = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._obj, name)


class WatchedContext:
    """What SSLProtocol needs of an ``ssl.SSLContext`` for one connection: ``wrap_bio``
    of the real context, with the resulting object watched by ``deadline``."""

    __slots__ = ("_clock", "_ctx", "_deadline")

    def __init__(
        self, ctx: ssl.SSLContext, deadline: HandshakeDeadline, clock: Callable[[], float]
    ) -> None:
        self._ctx = ctx
        self._deadline: HandshakeDeadline | None = deadline
        self._clock: Callable[[], float] | None = clock

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> Any:
        assert self._deadline is not None and self._clock is not None, "wrap_bio after detach()"
        obj = self._ctx.wrap_bio(
            incoming,
            outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
            session=session,
        )
        return _WatchedSSLObject(obj, outgoing, self._deadline, self._clock)

    def detach(self) -> None:
        """Drop the deadline once the handshake is over (SSLProtocol keeps this object
        for the connection's life)."""
        self._deadline = self._clock = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)
