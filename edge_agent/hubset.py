"""Where each of the agent's tunnels dials (docs/edge-agent.md, "Several hubs").

Sans-I/O: no asyncio, the time is passed in. The agent keeps :meth:`HubSet.wanted`
tunnels, one per *slot*; this class knows

* the bootstrap address (``--hub``, a hub or a TCP load balancer in front of several),
* the last hub list a hub pushed (:class:`remoteler.hublist.HubList`),
* which address each slot dials or is connected to, and which hub it is on once
  that hub's list said so,
* addresses and hub ids to avoid until a time: a failed dial, a hub that sent the
  agent away with a retry-after (it is draining).

:meth:`HubSet.pick` sends a slot to a random listed hub that no other slot holds
or dials and that is not avoided. With none, it falls back to the bootstrap
address only where that cannot land on a hub another slot holds for no gain
(:meth:`HubSet.may_fall_back`); else the slot dials nothing and waits. Two slots
that turn out to be on one hub (a load balancer chose, or two names of one hub):
the one that came up later is :meth:`HubSet.duplicate` and should close and
redial, unless it carries a session (the caller's decision).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from remoteler.hublist import MAX_CONNECTIONS, HubList

__all__ = ["FAILED_AVOID", "HELD_AVOID", "HubSet", "SlotState"]

#: Seconds a listed address whose dial failed is avoided (others are tried first).
FAILED_AVOID = 30.0
#: Seconds a listed address is avoided after its hub refused the tunnel because
#: another tunnel of this node there carries sessions (HTTP 409, "dial another hub").
HELD_AVOID = 30.0


class SlotState(enum.Enum):
    IDLE = "idle"
    """Not dialling (waiting to redial, or not started)."""
    DIALLING = "dialling"
    UP = "up"


@dataclass
class _Slot:
    state: SlotState = SlotState.IDLE
    #: the address dialled, or connected to ("" while idle)
    addr: str = ""
    #: the hub the tunnel is on, from the list it pushed; None until then
    hub_id: str | None = None
    #: the order slots came up in (an earlier one keeps a hub two slots share)
    order: int = 0


class HubSet:
    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        #: the last hub list any tunnel received (kept across drops)
        self.hubs: HubList | None = None
        self._slots: dict[int, _Slot] = {}
        #: "addr:HOST:PORT" or "id:HUB" -> monotonic time until which it is avoided
        self._avoid: dict[str, float] = {}
        self._ups = 0

    # -- queries ------------------------------------------------------------------
    def wanted(self) -> int:
        """Tunnels to keep: the list's connection count, no more than it names hubs
        (two tunnels to one hub would only evict each other); 1 before any list."""
        if self.hubs is None:
            return 1
        return max(1, min(self.hubs.connection_count, len(self.hubs.hubs), MAX_CONNECTIONS))

    def state(self, slot: int) -> SlotState:
        entry = self._slots.get(slot)
        return SlotState.IDLE if entry is None else entry.state

    def addr_of(self, slot: int) -> str | None:
        """The address ``slot`` dials or is connected to; None while idle."""
        entry = self._slots.get(slot)
        return entry.addr if entry is not None and entry.state is not SlotState.IDLE else None

    def hub_of(self, slot: int) -> str | None:
        """The hub ``slot``'s tunnel is on, once its list said so; else None."""
        entry = self._slots.get(slot)
        return entry.hub_id if entry is not None and entry.state is SlotState.UP else None

    def avoided(self, key: str, now: float) -> bool:
        until = self._avoid.get(key)
        if until is None:
            return False
        if until <= now:
            del self._avoid[key]
            return False
        return True

    def free(self, slot: int, now: float) -> list[tuple[str, str]]:
        """The listed hubs ``slot`` may dial: held or dialled by no other slot, not
        avoided, in the list's order."""
        if self.hubs is None:
            return []
        held_ids, held_addrs = set(), set()
        for other, entry in self._slots.items():
            if other == slot or entry.state is SlotState.IDLE:
                continue
            held_addrs.add(entry.addr)
            if entry.hub_id is not None:
                held_ids.add(entry.hub_id)
        return [
            (hub_id, addr)
            for hub_id, addr in self.hubs.hubs
            if hub_id not in held_ids
            and addr not in held_addrs
            and not self.avoided("id:" + hub_id, now)
            and not self.avoided("addr:" + addr, now)
        ]

    def shared_addr(self) -> str | None:
        """The one address every listed hub has (``hub start --workers``: the workers
        share a port, and which one a dial reaches is the kernel's choice), else None."""
        if self.hubs is None:
            return None
        addrs = {addr for _, addr in self.hubs.hubs}
        return next(iter(addrs)) if len(addrs) == 1 else None

    def may_fall_back(self, slot: int) -> bool:
        """May ``slot``, finding no free listed hub, dial the bootstrap address?

        Yes before any list, and while no other slot is up (a tunnel anywhere beats
        none). Otherwise the bootstrap (a load balancer, or the shared port of
        ``--workers``) may well land on a hub another slot holds: the hub refuses
        that tunnel (409) or replaces the sibling's. So only when every listed hub
        has one address, where dialling it again is the only way to reach another
        hub behind it.
        """
        if self.hubs is None:
            return True
        if not any(e.state is SlotState.UP for k, e in self._slots.items() if k != slot):
            return True
        return self.shared_addr() is not None

    def duplicate(self, slot: int) -> bool:
        """True if ``slot`` is up on a hub another slot came up on earlier: it should
        close its tunnel and redial elsewhere."""
        entry = self._slots.get(slot)
        if entry is None or entry.state is not SlotState.UP or entry.hub_id is None:
            return False
        return any(
            other.state is SlotState.UP
            and other.hub_id == entry.hub_id
            and other.order < entry.order
            for key, other in self._slots.items()
            if key != slot
        )

    # -- events -------------------------------------------------------------------
    def pick(self, slot: int, now: float, rng: random.Random) -> str | None:
        """The address ``slot`` dials next (it is dialling it from now on), or None:
        no listed hub is free and :meth:`may_fall_back` says no, so the slot stays
        idle and should ask again later (or when a list arrives or a tunnel ends).

        The fallback is the list's shared address when it has one that is not
        avoided, else the bootstrap address.
        """
        choices = self.free(slot, now)
        if slot == 0 and self._bootstrap_first(now, choices):
            addr = self.bootstrap
        elif choices:
            addr = rng.choice(choices)[1]
        elif self.may_fall_back(slot):
            shared = self.shared_addr()
            if shared is not None and not self.avoided("addr:" + shared, now):
                addr = shared
            else:
                addr = self.bootstrap
        else:
            self._slots[slot] = _Slot()
            return None
        self._slots[slot] = _Slot(SlotState.DIALLING, addr)
        return addr

    def _bootstrap_first(self, now: float, choices: list[tuple[str, str]]) -> bool:
        """Slot 0 dials the configured ``--hub`` (a load balancer, a proxy, the one
        address the device is known to reach): listed addresses serve the extra slots.
        Only when that address is avoided (it failed, or its hub is draining) and a
        cluster of two hubs or more has a free one does slot 0 go to a listed hub; a
        lone hub's list names no other way in."""
        if not self.avoided("addr:" + self.bootstrap, now):
            return True
        return not (choices and self.hubs is not None and len(self.hubs.hubs) >= 2)

    def up(self, slot: int) -> None:
        """``slot``'s dial succeeded: its tunnel is up (on a hub not yet known)."""
        entry = self._slot(slot, SlotState.DIALLING)
        self._ups += 1
        entry.state, entry.order = SlotState.UP, self._ups

    def dial_failed(self, slot: int, now: float, avoid_for: float = FAILED_AVOID) -> None:
        """``slot``'s dial failed: avoid that address for ``avoid_for`` seconds."""
        entry = self._slot(slot, SlotState.DIALLING)
        self._avoid_until("addr:" + entry.addr, now + avoid_for)
        self._slots[slot] = _Slot()

    def dial_held(self, slot: int, now: float, avoid_for: float = HELD_AVOID) -> None:
        """The hub ``slot`` reached refused it: another tunnel of this node there
        carries sessions (HTTP 409). Not a fault of the address, but that hub is
        taken: the address is avoided ``avoid_for`` seconds all the same, so that a
        free listed hub is dialled first."""
        self.dial_failed(slot, now, avoid_for)

    def learnt(self, slot: int, hubs: HubList) -> None:
        """The hub ``slot``'s tunnel is on pushed ``hubs``: that tunnel is on
        ``hubs.hub_id``, and the list is the one to go by from now on."""
        self.hubs = hubs
        entry = self._slots.get(slot)
        if entry is not None and entry.state is SlotState.UP:
            entry.hub_id = hubs.hub_id

    def down(self, slot: int, now: float, retry_after: float | None = None) -> None:
        """``slot``'s tunnel ended; ``retry_after``: the hub's GOAWAY asked for it (a
        draining hub), so that hub and address are avoided that long."""
        entry = self._slots.get(slot)
        if entry is None:
            return
        if retry_after is not None and retry_after > 0 and entry.addr:
            self._avoid_until("addr:" + entry.addr, now + retry_after)
            if entry.hub_id is not None:
                self._avoid_until("id:" + entry.hub_id, now + retry_after)
        self._slots[slot] = _Slot()

    def remove(self, slot: int) -> None:
        """``slot`` stopped (the list asks for fewer tunnels)."""
        self._slots.pop(slot, None)

    # -- internals ----------------------------------------------------------------
    def _slot(self, slot: int, state: SlotState) -> _Slot:
        entry = self._slots.get(slot)
        if entry is None or entry.state is not state:
            have = "idle" if entry is None else entry.state.value
            raise RuntimeError(f"slot {slot} is {have}, not {state.value}")
        return entry

    def _avoid_until(self, key: str, until: float) -> None:
        self._avoid[key] = max(until, self._avoid.get(key, until))
