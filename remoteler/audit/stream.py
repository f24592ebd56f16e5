"""Sans-I/O codec for the ``audit`` tunnel channel.

The channel is a byte stream of messages, each a 4-byte big-endian length and
a msgpack map of that many bytes:

- agent → hub ``{"t": "batch", "events": [AuditEvent.to_wire(), ...]}``
- hub → agent ``{"t": "ack", "ids": [event id, ...]}``, sent only after the hub
  committed every event of the batch (inserted now or earlier).
- hub → agent, over the node's quota (docs/audit.md): ``ack`` with the ids of the
  batch's first events it stored and ``"retry_after": seconds`` for the rest, or
  ``{"t": "refused", "code": 1, "reason": "...", "retry_after": seconds}`` when
  it stored none. The agent keeps what was not acked and sends it again after
  ``retry_after``. An agent older than this ignores ``refused`` (and the extra
  key): it re-sends after its ack timeout, so nothing is lost either way.
- an ``ack`` may also carry ``"reused": [event id, ...]`` and ``"seq_floor": n``:
  events not stored because the node already stored their seq under another id
  (it lost its outbox), and the node's highest stored seq + 1. The agent renumbers
  those events from ``seq_floor`` on and sends them again (docs/audit.md).

The agent deletes from its outbox only what was acked and re-sends the rest
after a reconnect; the hub's insert is idempotent on (node, id).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack

from remoteler.audit.events import AuditEvent

__all__ = [
    "MAX_MESSAGE",
    "MAX_RETRY_AFTER",
    "MAX_SEQ",
    "REFUSED_QUOTA",
    "MessageReader",
    "Reply",
    "ack_message",
    "batch_message",
    "encode_message",
    "parse_ack",
    "parse_batch",
    "parse_reply",
    "refused_message",
]

#: ``refused`` code: the node's audit quota at the hub is used up.
REFUSED_QUOTA = 1
#: Longest retry-after an agent honours (seconds): a hub cannot park it for longer.
MAX_RETRY_AFTER = 3600.0
#: Highest ``seq_floor`` an agent accepts (far below SQLite's 2**63 - 1).
MAX_SEQ = 1 << 53
#: Wait after a ``refused`` that gives no retry-after.
DEFAULT_REFUSED_WAIT = 30.0

#: Largest message either side accepts (the agent caps its batches below this).
MAX_MESSAGE = 4 << 20
_HEADER = 4


def encode_message(obj: dict[str, Any], max_message: int = MAX_MESSAGE) -> bytes:
    """Frame one map; raise ValueError if it would be larger than the peer accepts."""
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(body) > max_message:
        raise ValueError(f"audit message of {len(body)} bytes exceeds {max_message}")
    return len(body).to_bytes(_HEADER, "big") + body


class MessageReader:
    """Reassembles messages from stream bytes fed in any split.

    After a ValueError the stream is unusable: close the channel.
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()
        self._failed: str | None = None
        #: the encoded size of each message the last :meth:`feed` returned
        self.sizes: list[int] = []

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return the messages now complete (possibly none).

        Raises ValueError on an oversized, malformed or non-map message.
        """
        if self._failed is not None:
            raise ValueError(self._failed)
        self._buf += data
        out: list[dict[str, Any]] = []
        self.sizes = []
        while len(self._buf) >= _HEADER:
            size = int.from_bytes(self._buf[:_HEADER], "big")
            if size > self.max_message:
                self._fail(f"audit message of {size} bytes exceeds {self.max_message}")
            if len(self._buf) < _HEADER + size:
                break
            body = bytes(self._buf[_HEADER : _HEADER + size])
            del self._buf[: _HEADER + size]
            try:
                obj = msgpack.unpackb(body, raw=False, strict_map_key=True)
            except Exception:
                self._fail("malformed msgpack in audit message")
            if not isinstance(obj, dict):
                self._fail("an audit message must be a map")
            out.append(obj)
            self.sizes.append(size)
        return out

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete message held back."""
        return len(self._buf)

    def _fail(self, reason: str) -> NoReturn:
        self._failed = reason
        self._buf.clear()
        raise ValueError(reason)


def batch_message(events: Iterable[AuditEvent]) -> dict[str, Any]:
    return {"t": "batch", "events": [e.to_wire() for e in events]}


def ack_message(
    ids: Sequence[str],
    retry_after: float | None = None,
    reused: Sequence[str] = (),
    seq_floor: int = 0,
) -> dict[str, Any]:
    """An ack; with ``retry_after`` it acks only part of the batch (the rest was refused);
    ``reused`` names events refused for a seq already stored, ``seq_floor`` where to
    renumber them from."""
    msg: dict[str, Any] = {"t": "ack", "ids": list(ids)}
    if retry_after is not None:
        msg["retry_after"] = float(retry_after)
    if reused:
        msg["reused"] = list(reused)
        msg["seq_floor"] = int(seq_floor)
    return msg


def refused_message(retry_after: float, reason: str, code: int = REFUSED_QUOTA) -> dict[str, Any]:
    """Nothing of the batch was stored: send it again after ``retry_after`` seconds."""
    return {"t": "refused", "code": code, "reason": reason[:200], "retry_after": float(retry_after)}


@dataclass(frozen=True, slots=True)
class Reply:
    """The hub's answer to a batch: the ids it stored, and whether to wait before the next."""

    ids: list[str]
    #: seconds to wait before sending again (0 ... :data:`MAX_RETRY_AFTER`), or None
    retry_after: float | None = None
    #: ``refused`` code, 0 for an ack
    code: int = 0
    reason: str = ""
    #: ids refused for a seq the node already stored under another id
    reused: tuple[str, ...] = ()
    #: the node's highest stored seq + 1 (with ``reused``), 0 if not given
    seq_floor: int = 0


def parse_batch(msg: dict[str, Any]) -> list[AuditEvent]:
    """The events of a ``batch`` message; ValueError if it is anything else or malformed."""
    if msg.get("t") != "batch":
        raise ValueError(f"expected a batch message, got t={str(msg.get('t'))[:20]!r}")
    events = msg.get("events")
    if not isinstance(events, list):
        raise ValueError("batch events must be a list")
    return [AuditEvent.from_wire(e) for e in events]


def parse_ack(msg: dict[str, Any]) -> list[str]:
    """The event ids of an ``ack`` message; ValueError if it is anything else or malformed."""
    ids = msg.get("ids")
    if msg.get("t") != "ack" or not isinstance(ids, list):
        raise ValueError("expected an ack message with a list of ids")
    if not all(isinstance(i, str) for i in ids):
        raise ValueError("ack ids must be strings")
    return ids


def parse_reply(msg: dict[str, Any]) -> Reply:
    """An ``ack`` (whole or partial) or a ``refused``; ValueError if it is anything else."""
    raw = msg.get("retry_after")
    retry_after: float | None = None
    if raw is not None:
        if not isinstance(raw, (int, float)) or isinstance(raw, bool) or not raw == raw:
            raise ValueError("retry_after must be a number of seconds")
        retry_after = min(max(0.0, float(raw)), MAX_RETRY_AFTER)
    if msg.get("t") == "refused":
        code, reason = msg.get("code"), msg.get("reason")
        return Reply(
            [],
            DEFAULT_REFUSED_WAIT if retry_after is None else retry_after,
            code if isinstance(code, int) and not isinstance(code, bool) else -1,
            reason[:200] if isinstance(reason, str) else "",
        )
    reused, floor = msg.get("reused", []), msg.get("seq_floor", 0)
    if not isinstance(reused, list) or not all(isinstance(i, str) for i in reused):
        raise ValueError("ack reused must be a list of ids")
    if not isinstance(floor, int) or isinstance(floor, bool) or not 0 <= floor <= MAX_SEQ:
        raise ValueError(f"ack seq_floor must be an int from 0 to {MAX_SEQ}")
    return Reply(parse_ack(msg), retry_after, reused=tuple(reused), seq_floor=floor)
