"""Which channel's buffered data is framed next.

A local decision: nothing here is on the wire (``docs/wire-protocol.md``,
*Scheduling*). Control frames (WINDOW, PONG, OPEN…) never wait here; they are
queued ahead of all channel data. Channel data is scheduled by:

* **Priority classes** (:class:`Priority`), strict, except that a backlogged
  lower class is served once after the classes above it sent
  :data:`LOWER_SHARE` quanta while it waited: audit never starves.
* **Sparse channels first** within a class (fq_codel, RFC 8290 §4.1): a channel
  that had nothing buffered when data arrived (a keystroke, a short reply) goes
  to the class's *new* list, served before the *old* list of backlogged
  channels, for up to one quantum. That allowance is renewed whenever an old
  channel is served, so a channel that keeps refilling just in time cannot
  starve the backlogged ones.
* **Byte round robin** in the old list: each turn sends at most one quantum
  (:attr:`Scheduler.quantum`), so backlogged channels share bytes fairly — a
  deficit round robin whose frames are cut to the deficit, so none carries over.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Generic, Protocol, TypeVar

__all__ = ["KIND_PRIORITY", "LOWER_SHARE", "Priority", "Scheduler", "priority_for_kind"]


class Priority(IntEnum):
    """Scheduling class of a channel's data, chosen by the side that sends it."""

    HIGH = 0
    """Ahead of ordinary channels (no kind defaults to it; by explicit request only)."""
    NORMAL = 1
    """SSH sessions and any kind not listed in :data:`KIND_PRIORITY`."""
    LOW = 2
    """Background bulk (audit forwarding, firmware): uses what the others leave."""


#: Default class per channel kind; unknown kinds are NORMAL.
KIND_PRIORITY: dict[str, Priority] = {"audit": Priority.LOW, "firmware": Priority.LOW}

#: A backlogged class gets one turn after the classes above it sent this many
#: quanta while it waited: about 1/9 of a saturated link at least.
LOWER_SHARE = 8


def priority_for_kind(kind: str) -> Priority:
    """The default :class:`Priority` of a channel of ``kind``."""
    return KIND_PRIORITY.get(kind, Priority.NORMAL)


class Flow(Protocol):
    """What the scheduler keeps on a channel (the core's ``_Channel``)."""

    priority: Priority
    scheduled: bool
    """True while in one of the scheduler's lists (or being served)."""
    sparse_bytes: int
    """Bytes served from the new list since ``sparse_epoch``."""
    sparse_epoch: int


F = TypeVar("F", bound=Flow)


class Scheduler(Generic[F]):
    """Lists of channels with something to frame; see the module docstring.

    :meth:`push` a channel when it gets data (or an EOF/CLOSE to send), :meth:`pop`
    the next one, frame at most :meth:`pop`'s byte cap of it, then report with
    :meth:`served`.
    """

    __slots__ = ("_epoch", "_new", "_old", "_owed", "_share", "quantum", "size")

    def __init__(self, quantum: int) -> None:
        self.quantum = quantum
        """Bytes a channel sends per turn when it is not alone."""
        self.size = 0
        """Channels in the lists (including ones closed since, dropped when popped)."""
        # Plain lists, not deques: an empty deque costs ~600 bytes and every idle
        # tunnel has six of these (hub_scale: 10,000 tunnels); they hold a few channels.
        self._new: list[list[F]] = [[] for _ in Priority]
        self._old: list[list[F]] = [[] for _ in Priority]
        self._owed = [0 for _ in Priority]  # bytes sent above a class while it waited
        self._share = LOWER_SHARE * quantum
        self._epoch = 0  # counts frames served from old lists

    def push(self, flow: F, sparse: bool) -> None:
        """Schedule ``flow``; ``sparse`` if it had nothing buffered before this data."""
        if flow.scheduled:
            return
        flow.scheduled = True
        self.size += 1
        if sparse:
            if flow.sparse_epoch != self._epoch:
                flow.sparse_epoch, flow.sparse_bytes = self._epoch, 0
            if flow.sparse_bytes < self.quantum:
                self._new[flow.priority].append(flow)
                return
        self._old[flow.priority].append(flow)

    def pop(self, turn: int | None = None) -> tuple[F, bool] | None:
        """The next channel to serve and whether it is served as sparse, or None.

        ``turn`` is the most a frame may carry now when below the quantum (a slow
        link's budget, :mod:`remoteler.wire.pace`): a waiting lower class is then
        served after :data:`LOWER_SHARE` such frames, not quanta, so its share of
        the link stays the same. The channel stays ``scheduled``; the caller must
        call :meth:`served`.
        """
        if not self.size:
            return None
        new, old, owed = self._new, self._old, self._owed
        share = self._share if turn is None else LOWER_SHARE * max(min(turn, self.quantum), 1)
        chosen = -1
        for p in range(len(new)):
            if new[p] or old[p]:
                if chosen < 0 or owed[p] >= share:
                    chosen = p
            else:
                owed[p] = 0
        self.size -= 1
        if new[chosen]:
            return new[chosen].pop(0), True
        return old[chosen].pop(0), False

    def cap(self, flow: F, sparse: bool, chunk_max: int) -> int:
        """Most payload bytes to frame for ``flow`` now (just popped).

        A NORMAL or HIGH channel alone gets whole ``chunk_max`` frames (the bulk
        path stays as fast as before); otherwise, and always for LOW, one quantum
        or what is left of a sparse channel's allowance, so data that arrives
        next waits behind at most a quantum.
        """
        if self.size or flow.priority is Priority.LOW:
            return max(self.quantum - flow.sparse_bytes, 1) if sparse else self.quantum
        return chunk_max

    def served(self, flow: F, n: int, sparse: bool, more: bool) -> None:
        """``flow`` sent ``n`` bytes; ``more`` if it can send again now (data and window)."""
        p = flow.priority
        if sparse:
            flow.sparse_bytes += n
        else:
            self._epoch += 1  # an old channel had its turn: sparse allowances renew
        owed = self._owed
        owed[p] = 0
        for q in range(p + 1, len(owed)):
            if self._new[q] or self._old[q]:
                owed[q] += n
        if more:
            self._old[p].append(flow)
            self.size += 1
        else:
            flow.scheduled = False

    def clear(self) -> None:
        """Forget every channel (the tunnel closed)."""
        for lists in (self._new, self._old):
            for flows in lists:
                for flow in flows:
                    flow.scheduled = False
                flows.clear()
        self.size = 0
