"""What an agent supports, as it advertises it in its heartbeat (``caps``).

The agent sends :data:`AGENT_CAPS` in every status payload; the hub keeps a list
that passes :func:`valid_caps` (docs/wire-protocol.md, "Capabilities") and shows
it in ``tsh ls -v``. An agent from before capabilities sends no ``caps`` and is
treated as supporting none of them, so a feature that needs one falls back to
what such an agent does.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["AGENT_CAPS", "MAX_CAPS", "MAX_CAP_LEN", "RESUME", "agent_caps", "valid_caps"]

#: the agent speaks the resumable stream of docs/resume.md under SSH sessions
RESUME: Final = "resume"
#: what this agent can support, in the order it advertises them
AGENT_CAPS: Final[tuple[str, ...]] = (RESUME,)

#: at most this many capabilities in one heartbeat ...
MAX_CAPS: Final = 16
#: ... each at most this long
MAX_CAP_LEN: Final = 32
_CAP = re.compile(rf"[a-z0-9_.-]{{1,{MAX_CAP_LEN}}}")


def agent_caps(*, resume: bool) -> list[str]:
    """The ``caps`` of an agent's status: :data:`AGENT_CAPS` less what its configuration
    turns off (``resume``: not with ``--resume-grace 0``)."""
    return [c for c in AGENT_CAPS if c != RESUME or resume]


def valid_caps(value: object) -> tuple[str, ...] | None:
    """The capabilities in ``value``, or ``None`` when it is not a valid list of them.

    Valid: a list (or tuple) of at most :data:`MAX_CAPS` strings, each 1 to
    :data:`MAX_CAP_LEN` characters of ``[a-z0-9_.-]``. All or nothing, as labels
    (a list with one bad item is refused whole); repeats are kept once, in order.
    """
    if not isinstance(value, (list, tuple)) or len(value) > MAX_CAPS:
        return None
    if not all(isinstance(c, str) and _CAP.fullmatch(c) for c in value):
        return None
    return tuple(dict.fromkeys(value))
