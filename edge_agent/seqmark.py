"""The audit sequence's high-water mark, kept with the identity (``identity/audit-seq.json``).

The outbox numbers events 1, 2, 3, ... and the hub orders a node's trail by that
number, so a number must never be handed out twice, even when ``audit.db`` is
lost, emptied or replaced by a salvaged copy. The mark is a *reservation*: every
``seq`` the outbox hands out is at or below :attr:`SeqMark.reserved`, and before
it would cross it the outbox calls :meth:`SeqMark.reserve`, which durably writes
(fsync, atomic rename, directory fsync) a mark :data:`RESERVE_AHEAD` further on.
One durable write therefore covers :data:`RESERVE_AHEAD` events instead of one
per event (measured: docs/audit.md "Corrupt or lost outbox").

An outbox that was lost restarts at ``reserved + 1`` (:attr:`SeqMark.floor`):
possibly skipping numbers that were never used, never repeating one.

File format (JSON, mode 0600)::

    {"node_id": "...", "reserved": 8192}

A mark written for another node id (the device joined again) is ignored.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from remoteler.audit.stream import MAX_SEQ
from remoteler.fsutil import write_secret_file

__all__ = ["MARK_FILE", "RESERVE_AHEAD", "SeqMark", "SeqMarkError"]

log = logging.getLogger("remoteler.agent.seqmark")

MARK_FILE = "audit-seq.json"
#: Sequence numbers reserved by one durable write of the mark.
RESERVE_AHEAD = 4096
#: A longer mark file is damaged (a real one is under 100 bytes).
MAX_MARK_BYTES = 4096


class SeqMarkError(Exception):
    """The mark file exists but cannot be read (damaged); its message says which file."""


@dataclass
class SeqMark:
    """The reservation for one node; :meth:`load` it, then hand it to the outbox."""

    path: Path
    node_id: str
    reserved: int = 0
    """Every seq handed out so far is at most this (0: nothing was ever reserved)."""
    floor: int = 1
    """The lowest seq the outbox may hand out next (``reserved + 1`` after a loss)."""
    ahead: int = RESERVE_AHEAD
    writes: int = 0
    """Durable writes made by this process (for the bench and the tests)."""
    failing: bool = False
    """The last write failed (logged once until one succeeds again)."""

    @classmethod
    def load(cls, identity_dir: Path, node_id: str, ahead: int = RESERVE_AHEAD) -> SeqMark:
        """The node's mark (``reserved`` 0 if there is none yet, or it is another node's).

        Raises :class:`SeqMarkError` if the file exists but is damaged.
        """
        path = identity_dir / MARK_FILE
        mark = cls(path, node_id, ahead=ahead)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_MARK_BYTES + 1)
        except FileNotFoundError:
            return mark
        except OSError as exc:
            raise SeqMarkError(f"{path} cannot be read: {exc.strerror}") from None
        try:
            if len(raw) > MAX_MARK_BYTES:
                raise ValueError("too long")
            data = json.loads(raw)
            node, reserved = data["node_id"], data["reserved"]
            if not isinstance(node, str) or not isinstance(reserved, int):
                raise ValueError("wrong types")
            if not 0 <= reserved <= MAX_SEQ:
                raise ValueError("out of range")
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise SeqMarkError(f"{path} is damaged ({type(exc).__name__})") from None
        if node != node_id:
            log.info("audit sequence mark belongs to another node id; starting a new one")
            return mark
        mark.reserved = reserved
        return mark

    def covers(self, seq: int) -> bool:
        """True if ``seq`` may be handed out without writing the mark first."""
        return seq <= self.reserved

    def reserve(self, seq: int) -> None:
        """Durably reserve up to ``seq + ahead``; return only once the mark is on disk.

        Blocking (fsync): call it from a thread in asyncio code.
        """
        reserved = max(self.reserved, seq + self.ahead)
        data = json.dumps({"node_id": self.node_id, "reserved": reserved}).encode()
        write_secret_file(self.path, data)
        self.reserved = reserved
        self.writes += 1

    async def cover(self, seq: int) -> None:
        """Make sure ``seq`` is reserved before it is committed (asyncio; a thread for
        the write). A mark that cannot be written (read-only or full storage) is
        logged, never fatal: an event kept matters more, and a seq reused after a
        later loss is refused by the hub and renumbered (docs/audit.md)."""
        if not self.covers(seq):
            await asyncio.to_thread(self.reserve_or_log, seq)

    def reserve_or_log(self, seq: int) -> None:
        """:meth:`reserve` unless ``seq`` is covered; a failed write is logged once, not
        raised (see :meth:`cover`). Blocking."""
        if self.covers(seq):
            return
        try:
            self.reserve(seq)
        except OSError as exc:
            if not self.failing:
                log.error(
                    "audit sequence mark %s cannot be written (%s); events are still"
                    " stored, numbered without it",
                    self.path,
                    exc.strerror or exc,
                )
            self.failing = True
        else:
            if self.failing:
                log.info("audit sequence mark %s written again", self.path)
            self.failing = False
