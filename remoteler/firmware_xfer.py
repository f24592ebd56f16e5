"""Sans-I/O core of the ``firmware`` tunnel channel: a resumable, hash-checked transfer.

The hub opens the channel; both sides then exchange messages framed as in
``remoteler.audit.stream`` (4-byte length + msgpack map)::

    hub   -> agent  {"t": "offer", "rollout", "header": bytes, "size": bundle bytes,
                     "sha256": hex of the whole bundle file, "force": bool}
    agent -> hub    {"t": "resume", "offset": n, "prefix_sha256": hex of its first n bytes}
                 or {"t": "status", ...final state...}   (already done with this bundle)
                 or {"t": "refuse", "reason"}
    hub   -> agent  {"t": "data", "offset": n, "data": bytes}   (from the agreed offset;
                     offset 0 when the agent's prefix did not match the bundle)
                    ... {"t": "end"}
    agent -> hub    {"t": "status", "state", "detail", "progress"}  (any number, any time
                     after the offer; a final state ends the exchange)

The agent keeps what it staged across a cut link or its own restart; the hub
checks the staged prefix's hash before continuing from it, so a corrupt or
foreign partial file costs a restart from 0, never a bad install. Neither core
does I/O: the adapters read files, hash prefixes and sleep for the rate cap.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from remoteler.audit.stream import MessageReader, encode_message

__all__ = [
    "CHUNK",
    "FINAL_STATES",
    "STATES",
    "AgentTransfer",
    "Chunk",
    "Finished",
    "HubTransfer",
    "Offer",
    "ProtocolError",
    "Refused",
    "ResumeRequested",
    "Status",
    "TokenBucket",
    "XferState",
    "parse_rate",
]

#: Bytes of bundle per ``data`` message (bounded memory on both sides).
CHUNK = 64 * 1024
#: Largest message either side accepts: one chunk plus framing, or an offer.
MAX_MESSAGE = 256 * 1024
#: Largest bundle the protocol carries (the agent also checks its free space).
MAX_BUNDLE = 1 << 40
MAX_TEXT = 400
#: Largest bundle header offered (firmware_tools.bundle caps the manifest at 16 KiB).
MAX_HEADER = 32 * 1024

#: Node states a ``status`` message may carry, in the order a roll-out sees them.
STATES = (
    "pending",
    "transferring",
    "staging",
    "installing",
    "restarting",
    "health-check",
    "installed",
    "failed",
    "rolled-back",
)
#: States after which the agent does nothing more with this bundle.
FINAL_STATES = frozenset({"installed", "failed", "rolled-back"})
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ProtocolError(ValueError):
    """The peer broke the protocol: close the channel (the transfer can be retried)."""


class XferState(Enum):
    OFFERING = "offering"  # hub: offer sent, waiting for resume / agent: waiting for an offer
    SENDING = "sending"  # data flowing
    SENT = "sent"  # hub sent "end" / agent received all of it
    DONE = "done"  # a final status was exchanged, or a refusal
    FAILED = "failed"


# -- events --------------------------------------------------------------------


@dataclass(frozen=True)
class Offer:
    """The hub offers a bundle (agent side)."""

    rollout: str
    """Roll-out id, for status and audit."""
    header: bytes
    """The bundle's header (manifest and signature): check it before downloading."""
    size: int
    """Bytes of the whole bundle file."""
    sha256: str
    """Hex sha256 of the whole bundle file: the key of a staged partial download."""
    force: bool
    """Allow a downgrade or re-install (``tctl firmware push --force``)."""


@dataclass(frozen=True)
class Chunk:
    """Bundle bytes at ``offset`` (agent side); write them, then report progress."""

    offset: int
    """Where ``data`` goes in the bundle file."""
    data: bytes
    """At most :data:`CHUNK` bytes."""


@dataclass(frozen=True)
class Finished:
    """Every byte arrived (agent side): verify the bundle, install, report."""


@dataclass(frozen=True)
class ResumeRequested:
    """The agent holds ``offset`` bytes (hub side): check the prefix hash, then
    call :meth:`HubTransfer.start_from`."""

    offset: int
    """Bytes the agent has staged."""
    prefix_sha256: str
    """Hex sha256 of those bytes."""


@dataclass(frozen=True)
class Status:
    """The agent's state for this bundle (hub side)."""

    state: str
    """One of :data:`STATES`."""
    detail: str
    """Why (a failure's reason), or empty."""
    progress: int
    """Bytes of the bundle the agent holds."""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class Refused:
    """The agent will not take this bundle (hub side); final."""

    reason: str
    """The agent's one-line reason."""


Event = Offer | Chunk | Finished | ResumeRequested | Status | Refused


def _text(value: Any) -> str:
    return value[:MAX_TEXT] if isinstance(value, str) else ""


def _count(msg: dict[str, Any], key: str, limit: int = MAX_BUNDLE) -> int:
    value = msg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise ProtocolError(f"{msg.get('t')!s:.16} message: {key} must be an int in 0..{limit}")
    return value


def _hex(msg: dict[str, Any], key: str) -> str:
    value = msg.get(key)
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise ProtocolError(f"{msg.get('t')!s:.16} message: {key} must be a sha256 hex digest")
    return value


def _bytes(msg: dict[str, Any], key: str, limit: int) -> bytes:
    value = msg.get(key)
    if not isinstance(value, bytes) or len(value) > limit:
        raise ProtocolError(f"{msg.get('t')!s:.16} message: {key} must be at most {limit} bytes")
    return value


class _Core:
    def __init__(self) -> None:
        self.state = XferState.OFFERING
        self._reader = MessageReader(MAX_MESSAGE)
        self._out = bytearray()

    def data_to_send(self) -> bytes:
        """Bytes to write to the channel now (possibly none)."""
        out, self._out = bytes(self._out), bytearray()
        return out

    def _send(self, msg: dict[str, Any]) -> None:
        self._out += encode_message(msg, MAX_MESSAGE)

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed channel bytes; return the events now complete.

        Raises :class:`ProtocolError` on garbage or a message out of turn; the
        core is then FAILED and the channel should be closed.
        """
        if self.state is XferState.FAILED:
            raise ProtocolError("the transfer already failed")
        try:
            events: list[Event] = []
            for msg in self._reader.feed(data):
                events.extend(self._handle(msg))
            return events
        except ValueError as exc:
            self.state = XferState.FAILED
            raise ProtocolError(str(exc)) from None

    def _handle(self, msg: dict[str, Any]) -> list[Event]:
        raise NotImplementedError


class HubTransfer(_Core):
    """The hub's side: offer, agree on an offset, send chunks, collect statuses."""

    def __init__(
        self, rollout: str, header: bytes, size: int, sha256: str, force: bool = False
    ) -> None:
        super().__init__()
        if not 0 <= size <= MAX_BUNDLE or not _HEX64.fullmatch(sha256):
            raise ValueError("bad bundle size or digest")
        self.size = size
        self.sha256 = sha256
        #: next byte of the bundle to send
        self.position = 0
        #: where this transfer started (> 0: resumed)
        self.resumed_from = 0
        self.last_status: Status | None = None
        self._send(
            {
                "t": "offer",
                "rollout": rollout,
                "header": header,
                "size": size,
                "sha256": sha256,
                "force": force,
            }
        )

    def start_from(self, offset: int) -> None:
        """Send from ``offset``: the agent's offset if its prefix hash matched, else 0."""
        if self.state is not XferState.OFFERING or not 0 <= offset <= self.size:
            raise ValueError(f"cannot start from {offset} in state {self.state.value}")
        self.state = XferState.SENDING
        self.position = self.resumed_from = offset
        if offset == self.size:
            self._end()

    @property
    def wants_data(self) -> int:
        """Bytes to read from the bundle at :attr:`position` for the next chunk (0: none)."""
        if self.state is not XferState.SENDING:
            return 0
        return min(CHUNK, self.size - self.position)

    def send_chunk(self, data: bytes) -> None:
        """Send the bundle bytes at :attr:`position` (at most :attr:`wants_data`)."""
        if not data or len(data) > self.wants_data:
            raise ValueError("chunk does not fit the transfer")
        self._send({"t": "data", "offset": self.position, "data": data})
        self.position += len(data)
        if self.position == self.size:
            self._end()

    def _end(self) -> None:
        self._send({"t": "end"})
        self.state = XferState.SENT

    def _handle(self, msg: dict[str, Any]) -> list[Event]:
        kind = msg.get("t")
        if self.state is XferState.DONE:
            raise ProtocolError("message after the final status")
        if kind == "resume":
            if self.state is not XferState.OFFERING:
                raise ProtocolError("resume out of turn")
            offset = _count(msg, "offset")
            if offset > self.size:
                raise ProtocolError(f"resume offset {offset} past the bundle's {self.size} bytes")
            return [ResumeRequested(offset, _hex(msg, "prefix_sha256"))]
        if kind == "status":
            state = msg.get("state")
            if state not in STATES:
                raise ProtocolError(f"unknown firmware state {str(state)[:20]!r}")
            status = Status(str(state), _text(msg.get("detail")), _count(msg, "progress"))
            self.last_status = status
            if status.final:
                self.state = XferState.DONE
            return [status]
        if kind == "refuse":
            self.state = XferState.DONE
            return [Refused(_text(msg.get("reason")) or "refused")]
        raise ProtocolError(f"unexpected message {str(kind)[:16]!r} from the agent")


class AgentTransfer(_Core):
    """The agent's side: take the offer, say where to resume, receive chunks, report."""

    def __init__(self) -> None:
        super().__init__()
        self.offer: Offer | None = None
        #: next byte expected
        self.position = 0
        self.resume_offset = 0

    def resume(self, offset: int, prefix_sha256: str) -> None:
        """Answer the offer: ``offset`` bytes staged, with this hash (0 and the empty hash
        when nothing is)."""
        if self.state is not XferState.OFFERING or self.offer is None:
            raise ValueError("resume before an offer")
        if not 0 <= offset <= self.offer.size:
            raise ValueError("resume offset out of range")
        self._send({"t": "resume", "offset": offset, "prefix_sha256": prefix_sha256})
        self.state = XferState.SENDING
        self.resume_offset = offset
        self.position = -1  # the hub decides: our offset or 0

    def status(self, state: str, detail: str = "", progress: int = 0) -> None:
        """Report a state; a final one ends the exchange."""
        if state not in STATES:
            raise ValueError(f"unknown state {state!r}")
        if self.state is XferState.DONE:
            return
        self._send(
            {"t": "status", "state": state, "detail": detail[:MAX_TEXT], "progress": progress}
        )
        if state in FINAL_STATES:
            self.state = XferState.DONE

    def refuse(self, reason: str) -> None:
        self._send({"t": "refuse", "reason": reason[:MAX_TEXT]})
        self.state = XferState.DONE

    def _handle(self, msg: dict[str, Any]) -> list[Event]:
        kind = msg.get("t")
        if kind == "offer":
            if self.state is not XferState.OFFERING or self.offer is not None:
                raise ProtocolError("a second offer")
            rollout = msg.get("rollout")
            if not isinstance(rollout, str) or not 0 < len(rollout) <= 64:
                raise ProtocolError("offer message: rollout must be a short string")
            self.offer = Offer(
                rollout,
                _bytes(msg, "header", MAX_HEADER),
                _count(msg, "size"),
                _hex(msg, "sha256"),
                msg.get("force") is True,
            )
            return [self.offer]
        if kind == "data":
            if self.state is not XferState.SENDING or self.offer is None:
                raise ProtocolError("data out of turn")
            offset = _count(msg, "offset")
            data = _bytes(msg, "data", CHUNK)
            if self.position == -1:  # our offset, or 0 if the hub did not trust our prefix
                self.position = offset if offset in (0, self.resume_offset) else -2
            if offset != self.position:
                raise ProtocolError(f"data at {offset}, expected {self.position}")
            if offset + len(data) > self.offer.size:
                raise ProtocolError("data past the offered size")
            self.position += len(data)
            return [Chunk(offset, data)]
        if kind == "end":
            if self.state is not XferState.SENDING or self.offer is None:
                raise ProtocolError("end out of turn")
            if self.position == -1:  # nothing was missing
                self.position = self.resume_offset
            if self.position != self.offer.size:
                raise ProtocolError(f"end after {self.position} of {self.offer.size} bytes")
            self.state = XferState.SENT
            return [Finished()]
        raise ProtocolError(f"unexpected message {str(kind)[:16]!r} from the hub")


# -- bandwidth cap -------------------------------------------------------------------


class TokenBucket:
    """A byte-rate cap for one sender: ``rate`` bytes/s with bursts of ``burst`` bytes.

    The caller asks :meth:`delay` before sending ``n`` bytes and sleeps that long.
    """

    def __init__(self, rate: float, burst: int = CHUNK, now: float = 0.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = float(max(burst, 1))
        self.tokens = self.burst
        self.stamp = now

    def delay(self, n: int, now: float) -> float:
        """Take ``n`` bytes' tokens; return the seconds to wait before sending them."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?(?:/s)?", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1000, "mb": 10**6, "gb": 10**9, "kib": 1024, "mib": 1 << 20, "gib": 1 << 30}


def parse_rate(text: str) -> float:
    """``256KiB/s``, ``1MB/s``, ``50000`` (bytes/s) -> bytes per second; ValueError if bad."""
    m = _RATE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"bad rate {text!r}: use e.g. 256KiB/s or 1MB/s")
    value = float(m.group(1)) * _UNITS[(m.group(2) or "b").lower()]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"bad rate {text!r}: at least 1 byte per second")
    return value
