"""How far a device's clock is from the hub's, and what that means (sans-I/O).

The agent learns the hub's wall-clock time from each heartbeat answer (a PONG
carries it, docs/wire-protocol.md) and, before a tunnel exists, from the hub's
``ping`` RPC. The *skew* is ``device time - hub time``: positive when the device
is ahead, negative when it is behind. Within :data:`DEFAULT_MAX_SKEW` the agent
judges certificates and stamps audit events with hub-corrected time
(``local + correction``); beyond it, it trusts nothing the hub's time says and
every error names the skew (docs/tunnels.md, "Clock skew").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DEFAULT_MAX_SKEW",
    "REPORT_THRESHOLD",
    "SkewSample",
    "describe_skew",
    "format_skew",
    "human_span",
    "sample",
    "within",
]

#: Largest skew corrected for (seconds): a device up to a day off still connects,
#: logs in users and stamps audit events in hub time. Certificates that expired
#: (or start) less than this far away can therefore be accepted: that is the price.
DEFAULT_MAX_SKEW: Final = 24 * 3600.0
#: Skew worth an audit event (``clock.skew``) and a column in ``tctl nodes ls``.
REPORT_THRESHOLD: Final = 60.0
#: Largest magnitude accepted from a peer at all (100 years): anything bigger is junk.
_SANE: Final = 100 * 365 * 86400.0


@dataclass(frozen=True, slots=True)
class SkewSample:
    """One estimate of the device's skew from a request/response exchange."""

    skew: float
    """Device time minus hub time, seconds (positive: the device is ahead)."""
    error: float
    """Half the round-trip time: the estimate is within this of the truth."""


def sample(sent: float, received: float, hub_time: float) -> SkewSample | None:
    """The skew from one exchange: the device sent at ``sent`` and got the answer
    at ``received`` (its own wall clock), the hub stamped it ``hub_time``.

    The hub's stamp is taken to be halfway through the round trip (NTP's
    assumption, RFC 5905 §8), so the error is at most half the RTT. None if the
    numbers are not finite, the round trip is negative, or the skew is absurd.
    """
    values = (sent, received, hub_time)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    if received < sent:
        return None
    half = (received - sent) / 2
    skew = (sent + half) - hub_time
    if abs(skew) > _SANE:
        return None
    return SkewSample(skew, half)


def within(skew: float, bound: float) -> bool:
    """True if a skew of ``skew`` seconds is one the agent corrects for.

    Judged to the minute: a clock set a day ahead is measured a few milliseconds
    over a day (the round trip), and is still "a day" off.
    """
    return round(abs(skew) / 60) * 60 <= bound


def human_span(seconds: float) -> str:
    """``45 s``, ``20 min``, ``3 h``, ``30 days``: rounded, for a person to read."""
    s = abs(seconds)
    if s < 90:
        return f"{round(s)} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    if s < 48 * 3600:
        hours = s / 3600
        return f"{hours:.1f} h".replace(".0 h", " h") if hours < 10 else f"{round(hours)} h"
    return f"{round(s / 86400)} days"


def describe_skew(skew: float) -> str:
    """``this device's clock is 20 min behind the hub's`` (or ``ahead of``)."""
    where = "ahead of" if skew > 0 else "behind"
    return f"this device's clock is {human_span(skew)} {where} the hub's"


def format_skew(skew: float | None) -> str:
    """A table cell: ``-`` when unknown or under :data:`REPORT_THRESHOLD`, else
    ``+1 day``-style text (``+`` ahead of the hub, ``-`` behind)."""
    if skew is None or not math.isfinite(skew) or abs(skew) < REPORT_THRESHOLD:
        return "-"
    return ("+" if skew > 0 else "-") + human_span(skew)
