"""CA rotation as a state machine, with no I/O: phases, transitions and who signs what.

Phases follow Teleport's (``tctl auth rotate``)::

    standby ─▶ init ─▶ update_clients ─▶ update_servers ─▶ standby (old CA gone)
                 │            │                 │
                 └────────────┴────────┬────────┘
                                       ▼
                                   rollback ─▶ standby (new CA gone)

Per kind (``user`` or ``host``) there is a *current* CA and, while rotating, a
*next* one. Which of them does each job in each phase:

=============== ============ ============ ================
phase           signs        serves       trusted
=============== ============ ============ ================
standby         current      current      current
init            current      current      current, next
update_clients  next         current      current, next
update_servers  next         next         current, next
rollback        current      current      current, next
=============== ============ ============ ================

"signs" issues client certificates (user certificates, the node's x509 tunnel
certificate); "serves" issues what servers present (the hub's TLS certificate,
the nodes' SSH host certificates). Completing a rotation (update_servers ->
standby) makes *next* the new *current*; finishing a rollback drops *next*.

In ``auto`` mode the phases advance by themselves, each after a third of the
grace period: the caller asks :func:`due` on its own clock and applies the
answer with :func:`transition`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any, Final, Literal

__all__ = [
    "AUTO_ORDER",
    "DEFAULT_GRACE_PERIOD",
    "TRANSITIONS",
    "Change",
    "Mode",
    "Phase",
    "RotationError",
    "RotationState",
    "due",
    "revision",
    "transition",
]

Mode = Literal["manual", "auto"]
#: Teleport's default: old certificates stay trusted this long in auto mode.
DEFAULT_GRACE_PERIOD: Final = 30 * 3600.0


class RotationError(Exception):
    """A phase change that the rules do not allow; the message names the allowed ones."""


class Phase(StrEnum):
    STANDBY = "standby"
    INIT = "init"
    UPDATE_CLIENTS = "update_clients"
    UPDATE_SERVERS = "update_servers"
    ROLLBACK = "rollback"


TRANSITIONS: Final[dict[Phase, tuple[Phase, ...]]] = {
    Phase.STANDBY: (Phase.INIT,),
    Phase.INIT: (Phase.UPDATE_CLIENTS, Phase.ROLLBACK),
    Phase.UPDATE_CLIENTS: (Phase.UPDATE_SERVERS, Phase.ROLLBACK),
    Phase.UPDATE_SERVERS: (Phase.STANDBY, Phase.ROLLBACK),
    Phase.ROLLBACK: (Phase.STANDBY,),
}
#: The path auto mode walks.
AUTO_ORDER: Final = (Phase.INIT, Phase.UPDATE_CLIENTS, Phase.UPDATE_SERVERS, Phase.STANDBY)

Which = Literal["current", "next"]


@dataclass(frozen=True)
class RotationState:
    """One CA kind's rotation state, as stored (``to_dict``/``from_dict``)."""

    phase: Phase = Phase.STANDBY
    """Where the rotation is."""
    mode: Mode = "manual"
    """``auto`` advances by itself across the grace period; ``manual`` waits for tctl."""
    serial: int = 0
    """Counts every phase change; part of the fleet's :func:`revision`."""
    generation: int = 0
    """Completed rotations: the current CA is the ``generation``-th one."""
    started: float = 0.0
    """When the rotation (its init) began, Unix seconds; 0 if never."""
    phase_started: float = 0.0
    """When the current phase began."""
    grace_period: float = 0.0
    """Auto mode: seconds from init to the final standby."""
    last: str = ""
    """How the last rotation ended: ``completed``, ``rolled back`` or ``""``."""

    @property
    def rotating(self) -> bool:
        return self.phase is not Phase.STANDBY

    @property
    def signer(self) -> Which:
        """The CA that signs client certificates in this phase."""
        return "next" if self.phase in (Phase.UPDATE_CLIENTS, Phase.UPDATE_SERVERS) else "current"

    @property
    def server(self) -> Which:
        """The CA that signs what servers present (hub TLS, SSH host certificates)."""
        return "next" if self.phase is Phase.UPDATE_SERVERS else "current"

    @property
    def trusted(self) -> tuple[Which, ...]:
        """The CAs every party must accept in this phase."""
        return ("current", "next") if self.rotating else ("current",)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["phase"] = self.phase.value
        return data

    @classmethod
    def from_dict(cls, data: Any) -> RotationState:
        """Parse a stored state; raise :class:`RotationError` if it is damaged."""
        if not isinstance(data, dict):
            raise RotationError("rotation state is not a map")
        try:
            state = cls(
                phase=Phase(data.get("phase", "standby")),
                mode="auto" if data.get("mode") == "auto" else "manual",
                serial=int(data.get("serial", 0)),
                generation=int(data.get("generation", 0)),
                started=float(data.get("started", 0.0)),
                phase_started=float(data.get("phase_started", 0.0)),
                grace_period=float(data.get("grace_period", 0.0)),
                last=str(data.get("last", "")),
            )
        except (TypeError, ValueError) as exc:
            raise RotationError(f"rotation state is damaged ({exc})") from None
        if not all(
            math.isfinite(v) and v >= 0
            for v in (state.started, state.phase_started, state.grace_period)
        ):
            raise RotationError("rotation state has a bad time")
        return state


@dataclass(frozen=True)
class Change:
    """The result of :func:`transition`: the new state and what the caller must do."""

    before: Phase
    state: RotationState
    generate_next: bool = False
    """standby -> init: create the next CA (before storing ``state``)."""
    promote_next: bool = False
    """update_servers -> standby: the next CA becomes current, the old one is deleted."""
    discard_next: bool = False
    """rollback -> standby: delete the next CA."""

    @property
    def after(self) -> Phase:
        return self.state.phase


def transition(
    state: RotationState,
    target: Phase,
    now: float,
    *,
    mode: Mode = "manual",
    grace_period: float | None = None,
) -> Change:
    """Move ``state`` to ``target``; raise :class:`RotationError` if not allowed.

    ``mode``/``grace_period`` are taken when a rotation starts (target init);
    any later manual change (``mode="manual"``) stops auto mode.
    """
    allowed = TRANSITIONS[state.phase]
    if target not in allowed:
        names = " or ".join(p.value for p in allowed)
        raise RotationError(
            f"cannot go from phase {state.phase.value} to {target.value}; next can be {names}"
        )
    base = replace(state, phase=target, serial=state.serial + 1, phase_started=now)
    if target is Phase.INIT:
        grace = DEFAULT_GRACE_PERIOD if grace_period is None else grace_period
        if not (math.isfinite(grace) and grace > 0):
            raise RotationError("the grace period must be a positive duration, e.g. 30h")
        new = replace(base, mode=mode, started=now, grace_period=grace, last="")
        return Change(state.phase, new, generate_next=True)
    if mode == "manual":
        base = replace(base, mode="manual")
    if target is Phase.STANDBY and state.phase is Phase.UPDATE_SERVERS:
        new = replace(base, generation=state.generation + 1, last="completed")
        return Change(state.phase, new, promote_next=True)
    if target is Phase.STANDBY:  # from rollback
        return Change(state.phase, replace(base, last="rolled back"), discard_next=True)
    return Change(state.phase, base)


def due(state: RotationState, now: float) -> Phase | None:
    """In auto mode, the phase to move to now (a third of the grace period per step)."""
    if state.mode != "auto" or state.phase not in AUTO_ORDER[:-1]:
        return None
    if now - state.phase_started < state.grace_period / 3:
        return None
    return AUTO_ORDER[AUTO_ORDER.index(state.phase) + 1]


def revision(user: RotationState, host: RotationState) -> str:
    """What a node must have caught up with: changes with every phase change of either CA."""
    return f"u{user.generation}.{user.serial}-h{host.generation}.{host.serial}"
