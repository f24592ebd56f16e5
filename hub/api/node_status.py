"""What the hub keeps of an agent's heartbeat status: known keys only, typed, capped.

Sans-I/O. A heartbeat's status *replaces* the previous one (it is never merged
into it), so a node cannot grow what the hub holds for it by sending new keys.
The keys kept are the ones the agent sends (``edge_agent/agent.py``
``heartbeat_payload`` and ``_status_loop``); every other key is dropped, and
every value is type- and size-checked (a wrong type counts as absent), and
non-printable characters in strings are replaced by ``?``:

========================  ==================================================
``labels``                map of at most 64 labels (:func:`valid_labels`)
``version``               string, first 64 characters
``name``                  string, first 253 characters
``ssh``                   ``"embedded"`` or ``"forward"``
``serial_ports``          list of strings: first 32, each its first 256 chars
``audit``                 map: ``pending``/``bytes`` non-negative ints,
                          ``oldest`` a finite number (seconds since the epoch)
``clock_skew``            finite number of seconds, device minus hub, at most
                          100 years either way (sent when a minute or more)
``caps``                  list of at most 16 capability names, each 1-32 chars
                          of ``[a-z0-9_.-]`` (:func:`remoteler.caps.valid_caps`);
                          refused whole otherwise, as none (an older agent's)
========================  ==================================================

A heartbeat whose payload is larger than :data:`MAX_STATUS_BYTES` (estimated
encoded size, counted only up to the cap) is refused whole: the caller keeps the
previous status, logs once per tunnel, and the heartbeat still proves liveness.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from remoteler.addr import valid_labels
from remoteler.caps import valid_caps
from remoteler.text import printable

__all__ = [
    "MAX_STATUS_BYTES",
    "AuditBacklog",
    "NodeStatus",
    "StatusTooLarge",
    "parse_status",
    "status_size",
]

#: Largest heartbeat payload kept (estimated encoded bytes). The real agent's is
#: under 1 KiB plus its labels (at most 64 x 316 bytes) and serial ports (32 x 256).
MAX_STATUS_BYTES = 64 * 1024
MAX_VERSION = 64
MAX_NAME = 253
MAX_PORTS = 32
MAX_PORT_NAME = 256
#: largest integer kept for the audit counters (SQLite's INTEGER range)
_MAX_INT = (1 << 63) - 1
KNOWN_KEYS = frozenset(
    {
        "labels",
        "version",
        "name",
        "ssh",
        "serial_ports",
        "audit",
        "clock_skew",
        "caps",
        "cert_expires",
    }
)
#: latest host-certificate expiry kept (year 2286, epoch seconds): beyond, junk
MAX_CERT_EXPIRES = 10_000_000_000
#: largest clock skew kept (100 years, seconds): beyond, the value is junk
MAX_SKEW = 100 * 365 * 86400.0


class StatusTooLarge(ValueError):
    """The heartbeat's payload is over the cap: ignore it whole."""


@dataclass(frozen=True, slots=True)
class AuditBacklog:
    pending: int = 0
    bytes: int = 0
    oldest: float | None = None


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One heartbeat's status, as kept; the defaults mean "not sent"."""

    #: ``None`` when absent or invalid (the caller keeps the labels it had)
    labels: dict[str, str] | None = None
    version: str = ""
    name: str = ""
    ssh: str = ""
    serial_ports: tuple[str, ...] = ()
    audit: AuditBacklog | None = None
    #: the device's clock minus the hub's (seconds), None when not sent
    clock_skew: float | None = None
    #: what the agent supports (remoteler/caps.py); () when not sent or invalid
    caps: tuple[str, ...] = ()
    #: when the node's host certificate expires (epoch seconds); None when not sent
    cert_expires: float | None = None
    #: names of keys dropped (at most 8, each its first 64 characters), for a log line
    unknown: tuple[str, ...] = field(default=(), compare=False)


def status_size(payload: object, cap: int) -> int:
    """Estimated encoded size of ``payload``, counted until it passes ``cap``.

    Strings count their length, containers 1 byte plus their items, scalars 9
    bytes. It stops as soon as the total passes ``cap``, so a huge payload costs
    no more than a small one over the cap. Iterative: no recursion limit to hit.
    """
    total = 0
    stack: list[object] = [payload]
    while stack and total <= cap:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += 1 + len(item)
        elif isinstance(item, Mapping):
            total += 1
            for key, value in item.items():
                stack.append(key)
                stack.append(value)
                if len(stack) > cap:
                    return cap + 1
        elif isinstance(item, (list, tuple)):
            total += 1
            if len(item) > cap:
                return cap + 1
            stack.extend(item)
        else:
            total += 9
    return total


def parse_status(payload: Mapping[str, Any], max_bytes: int = MAX_STATUS_BYTES) -> NodeStatus:
    """The status to keep from one heartbeat payload; :class:`StatusTooLarge` over the cap."""
    size = status_size(payload, max_bytes)
    if size > max_bytes:
        raise StatusTooLarge(f"heartbeat status over {max_bytes} bytes")
    labels = payload.get("labels")
    version = payload.get("version")
    name = payload.get("name")
    ssh = payload.get("ssh")
    unknown = [str(k)[:64] for k in payload if k not in KNOWN_KEYS][:8]
    return NodeStatus(
        labels=dict(labels) if valid_labels(labels) else None,  # type: ignore[arg-type]
        version=_text(version, MAX_VERSION),
        name=_text(name, MAX_NAME),
        ssh=ssh if ssh in ("embedded", "forward") else "",
        serial_ports=_ports(payload.get("serial_ports")),
        audit=_audit(payload.get("audit")),
        clock_skew=_skew(payload.get("clock_skew")),
        caps=valid_caps(payload.get("caps")) or (),
        cert_expires=_expires(payload.get("cert_expires")),
        unknown=tuple(unknown),
    )


def _text(value: object, limit: int) -> str:
    """A string's first ``limit`` characters, controls replaced by '?' (they reach
    operators' terminals in ``tsh ls -v`` and ``tctl nodes ls``); "" if not a string."""
    return printable(value[:limit], limit) if isinstance(value, str) else ""


def _ports(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(_text(p, MAX_PORT_NAME) for p in value[:MAX_PORTS] if isinstance(p, str))


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return min(max(0, value), _MAX_INT)
    return 0


def _audit(value: object) -> AuditBacklog | None:
    if not isinstance(value, Mapping):
        return None
    oldest = value.get("oldest")
    ok = isinstance(oldest, (int, float)) and not isinstance(oldest, bool)
    return AuditBacklog(
        pending=_count(value.get("pending")),
        bytes=_count(value.get("bytes")),
        # finite only: tctl nodes ls computes the age with int() (inf raised there)
        oldest=float(oldest) if ok and math.isfinite(oldest) else None,  # type: ignore[arg-type]
    )


def _expires(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 < value < MAX_CERT_EXPIRES else None


def _skew(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    skew = float(value)
    return skew if math.isfinite(skew) and abs(skew) <= MAX_SKEW else None
