"""The device's audit outbox: every event is durable in SQLite before it is acknowledged.

One file (WAL, ``synchronous=FULL``, mode 0600) holds the events the hub has
not acknowledged yet. :meth:`Outbox.append` returns once the event is
committed; concurrent appends share one transaction (group commit), so a burst
of events costs one fsync, not one each. The forwarder reads the oldest events
with :meth:`Outbox.batch` and deletes them with :meth:`Outbox.ack` once the hub
has committed them, so after any crash or reconnect delivery resumes from the
oldest unacknowledged event (the hub's insert is idempotent on node + id).

Quota (the sum of the stored events' encoded sizes) is a stated policy, never
silent; every event given up is counted in an ``audit.dropped`` event:

``drop-recordings-first`` (default)
    Past the quota, the oldest ``session.data`` chunks are deleted to make room.
    Every other event is kept: if only such events remain, they are stored
    anyway (the quota is then exceeded) and new ``session.data`` chunks are
    dropped instead.
``refuse-sessions``
    Nothing stored is deleted. :meth:`Outbox.check_room` raises
    :class:`QuotaExceeded` at or over the quota, so new sessions are refused;
    other events of sessions already running are still stored (the quota is then
    exceeded), and their ``session.data`` chunks past the quota are dropped.

Full disk (:mod:`edge_agent.outbox_quota`): recordings and new sessions never
use the last ``reserve`` bytes of the file system (default the larger of 2 MiB
and 5 %, at most 64 MiB), kept for the ends of running sessions, ``audit.dropped`` and the
drain; :meth:`Outbox.admit` decides whether a session may start. An append
whose commit fails (``SQLITE_FULL``, I/O error) is counted and reported in the
next ``audit.dropped`` event that can be written. The WAL is checkpointed with
``TRUNCATE`` once an ack empties the outbox or the WAL passes :data:`WAL_BOUND`
or half the reserve, whichever is smaller.

Drops are merged into one ``audit.dropped`` event per overflow episode: the
counts go into the pending one until the forwarder has taken it in a batch
(or the outbox is reopened), then a new one is written. That event itself may
take the outbox a few hundred bytes past the quota.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import msgpack

from edge_agent import outbox_quota
from edge_agent.outbox_quota import Admission
from edge_agent.seqmark import SeqMark
from remoteler.audit.events import AuditEvent, EventType, make_event
from remoteler.errors import RemotelerError

__all__ = ["DiskFull", "Outbox", "Policy", "QuotaExceeded"]

log = logging.getLogger("remoteler.agent.outbox")

Policy = Literal["drop-recordings-first", "refuse-sessions"]
POLICIES: tuple[Policy, ...] = ("drop-recordings-first", "refuse-sessions")

#: Most appends committed in one transaction (bounds one commit's latency).
MAX_GROUP = 4096
#: Largest stored event: a batch of one must still fit a channel message.
MAX_EVENT = 1 << 20
#: Ids per ``DELETE ... IN (...)`` (well under SQLite's variable limit).
_ACK_CHUNK = 500
#: WAL size past which an ack checkpoints with TRUNCATE even if events remain.
WAL_BOUND = 4 << 20
#: Seconds between tries to record the count of failed appends in ``audit.dropped``.
LOST_RETRY = 2.0
_RECORDING = str(EventType.SESSION_DATA)

# The literal 'session.data' lets SQLite use the partial index.
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq  INTEGER PRIMARY KEY AUTOINCREMENT,
    id   TEXT NOT NULL,
    type TEXT NOT NULL,
    time REAL NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_id ON events (id);
CREATE INDEX IF NOT EXISTS events_recordings ON events (seq) WHERE type = 'session.data';
"""


class QuotaExceeded(RemotelerError):
    """The outbox is full under ``refuse-sessions``: no new session may start."""

    code = "quota_exceeded"


class DiskFull(QuotaExceeded):
    """Refused by the disk's reserve, not the quota: free space on the device, not the hub."""


def _pack(event: AuditEvent) -> bytes:
    """The stored form: the wire map without ``seq`` (a column of its own).

    Raises ValueError if the hub would refuse the event (e.g. a login over 256
    characters) or it is larger than :data:`MAX_EVENT`, so a bad event fails
    its own append instead of wedging the head of the outbox for ever.
    """
    wire = event.to_wire()
    AuditEvent.from_wire(wire)
    del wire["seq"]
    body: bytes = msgpack.packb(wire, use_bin_type=True)
    if len(body) > MAX_EVENT:
        raise ValueError(f"{event.type} event of {len(body)} bytes; at most {MAX_EVENT} are stored")
    return body


def _unpack(seq: int, body: bytes) -> AuditEvent:
    wire = msgpack.unpackb(body, raw=False)
    wire["seq"] = seq
    return AuditEvent.from_wire(wire)


@dataclass
class _Row:
    seq: int
    event: AuditEvent
    size: int
    body: bytes
    recording: bool
    index: int = -1
    """Position in the group's results (-1: not an append)."""
    deleted: bool = False


@dataclass
class _Dropped:
    """The ``audit.dropped`` event of the current overflow episode, still mergeable."""

    event: AuditEvent
    size: int


class Outbox:
    """The audit outbox; create it with :meth:`open`, end with :meth:`close`."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        *,
        quota_bytes: int,
        policy: Policy,
        node: str,
        path: Path | None = None,
        reserve_bytes: int | None = None,
    ) -> None:
        self.quota_bytes = quota_bytes
        self.path = path
        """The database file (None: no disk checks)."""
        self.reserve_bytes = reserve_bytes
        """Free space kept for session ends and the drain (None: the default share)."""
        self._lost = (0, 0)  # (events, bytes) whose commit failed, not yet in audit.dropped
        self._lost_retry: asyncio.TimerHandle | None = None  # at most one pending
        self.open_sessions: weakref.WeakSet[object] = weakref.WeakSet()
        """Sessions started and not ended yet: their ends are kept room for at admission
        (weak: one whose end is never written stops counting once it is collected)."""
        self.policy: Policy = policy
        self.node = node
        self.changed = asyncio.Event()
        """Set whenever an event was appended; the reader clears it."""
        self._db = db
        self._lock = asyncio.Lock()  # one transaction (or read) at a time on the connection
        self._queue: list[tuple[AuditEvent, bytes, asyncio.Future[AuditEvent]]] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        self._count = 0
        self._bytes = 0
        self._recording_bytes = 0
        self._next_seq = 1
        self._dropped: _Dropped | None = None
        self._mark: SeqMark | None = None

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        quota_bytes: int = 256 << 20,
        policy: Policy = "drop-recordings-first",
        node: str = "",
        mark: SeqMark | None = None,
        reserve_bytes: int | None = None,
    ) -> Outbox:
        """Open (or create, mode 0600) the outbox at ``path``; call :meth:`close` when done.

        With ``mark`` (edge_agent/seqmark.py) sequence numbers start at its floor at
        least and are reserved in it before they are committed.
        """
        if policy not in POLICIES:
            raise ValueError(f"unknown outbox policy {policy!r}; choose from {', '.join(POLICIES)}")
        if quota_bytes <= 0:
            raise ValueError("the outbox quota must be a positive number of bytes")
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        if path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # who ran what on the device: not for other local users
        db = await aiosqlite.connect(path)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")  # durable at commit, even on power loss
            await db.executescript(SCHEMA)
            await db.commit()
            self = cls(
                db,
                quota_bytes=quota_bytes,
                policy=policy,
                node=node,
                path=path,
                reserve_bytes=reserve_bytes,
            )
            self._mark = mark
            await self._load()
        except BaseException:
            await db.close()
            raise
        self._writer = asyncio.create_task(self._write_loop())
        return self

    async def _load(self) -> None:
        async with self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0),"
            " coalesce(sum(CASE WHEN type = 'session.data' THEN size ELSE 0 END), 0)"
            " FROM events"
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        self._count, self._bytes, self._recording_bytes = row
        async with self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'") as cur:
            last = await cur.fetchone()
        self._next_seq = (last[0] if last else 0) + 1
        if self._mark is not None:
            self._next_seq = max(self._next_seq, self._mark.floor)

    # -- public API -------------------------------------------------------------

    async def append(self, event: AuditEvent) -> AuditEvent:
        """Store ``event``; return it with its outbox ``seq`` once it is committed.

        A ``session.data`` chunk the quota policy drops comes back with ``seq``
        0: it is not stored, only counted in an ``audit.dropped`` event. Raises
        the database's error (e.g. disk full) if the commit failed.
        """
        if self._closing:
            raise RuntimeError("append() on a closed audit outbox")
        body = _pack(event)
        future: asyncio.Future[AuditEvent] = asyncio.get_running_loop().create_future()
        self._queue.append((event, body, future))
        self._wakeup.set()
        # The write goes ahead even if the caller is cancelled meanwhile.
        return await asyncio.shield(future)

    def check_room(self) -> None:
        """Raise :class:`QuotaExceeded` if a new session could not be audited (before it starts)."""
        self.admit()

    def disk(self) -> outbox_quota.DiskRoom | None:
        """The file system holding the outbox (None: no path, or ``statvfs`` failed)."""
        if self.path is None:
            return None
        return outbox_quota.disk_room(self.path, self.path.with_name(self.path.name + "-wal"))

    def reserve(self, room: outbox_quota.DiskRoom) -> int:
        return outbox_quota.reserve_bytes(room.total, self.reserve_bytes)

    def admit(self) -> Admission:
        """Whether a new session may start and is recorded; raise :class:`QuotaExceeded`
        with one line for the user if it could not be audited."""
        room = self.disk()
        reserve = self.reserve(room) if room is not None else 0
        verdict = outbox_quota.admit_session(
            room, reserve, self.policy, self._bytes, self.quota_bytes, len(self.open_sessions)
        )
        if verdict is not Admission.REFUSED:
            return verdict
        by_quota = outbox_quota.admit_session(
            None, 0, self.policy, self._bytes + (room.wal if room else 0), self.quota_bytes
        )
        if room is not None and by_quota is not Admission.REFUSED:  # the disk refused
            raise DiskFull(
                f"the device's disk is full ({room.free >> 10} KiB free, {reserve >> 10} KiB"
                " kept for audit): new sessions are refused until space is freed on the"
                " device or its audit backlog drains to the hub"
            )
        raise QuotaExceeded(
            f"audit outbox full ({self._bytes} of {self.quota_bytes} bytes, {self._count}"
            " events waiting for the hub): new sessions are refused until the device"
            " reaches the hub and its audit backlog drains, or the outbox quota is raised"
        )

    async def batch(self, max_count: int = 500, max_bytes: int = 512 * 1024) -> list[AuditEvent]:
        """The oldest unacknowledged events, in seq order, within the caps (at least one)."""
        bad: list[int] = []
        async with self._lock:
            async with self._db.execute(
                "SELECT seq, size, body FROM events ORDER BY seq LIMIT ?", (max(1, max_count),)
            ) as cur:
                rows = await cur.fetchall()
            events: list[AuditEvent] = []
            total = 0
            for seq, size, body in rows:
                if events and total + size > max_bytes:
                    break
                try:
                    events.append(_unpack(seq, body))
                except Exception:  # damaged on the storage: quick_check reads no row's bytes
                    bad.append(seq)
                    continue
                total += size
            if bad:
                await self._delete_undecodable(bad)
            if self._dropped is not None and events and events[-1].seq >= self._dropped.event.seq:
                self._dropped = None  # on its way to the hub: later drops start a new episode
        if bad:  # else it would head the outbox for ever: nothing after it delivered
            span = f"seq {bad[0]}-{bad[-1]}"
            log.error("audit outbox: %d stored events undecodable, dropped (%s)", len(bad), span)
            await self.append(
                make_event(
                    EventType.AUDIT_CORRUPT,
                    node=self.node,
                    events_salvaged=0,
                    pages=0,
                    pages_lost=0,
                    moved_to="",
                    reason=f"{len(bad)} stored events undecodable, dropped ({span})",
                )
            )
        return events

    async def _delete_undecodable(self, seqs: list[int]) -> None:
        try:
            for seq in seqs:
                async with self._db.execute(
                    "DELETE FROM events WHERE seq = ? RETURNING type, size", (seq,)
                ) as cur:
                    for type_, size in await cur.fetchall():
                        self._count -= 1
                        self._bytes -= size
                        self._recording_bytes -= size if type_ == _RECORDING else 0
            await self._db.commit()
        except BaseException:
            await self._db.rollback()
            raise

    async def ack(self, ids: Sequence[str]) -> int:
        """Delete the events the hub has committed; return how many were deleted."""
        unique = list(dict.fromkeys(ids))
        if not unique:
            return 0
        async with self._lock:
            deleted: list[Any] = []
            try:
                for i in range(0, len(unique), _ACK_CHUNK):
                    chunk = unique[i : i + _ACK_CHUNK]
                    marks = ",".join("?" * len(chunk))
                    async with self._db.execute(
                        f"DELETE FROM events WHERE id IN ({marks}) RETURNING seq, type, size",  # noqa: S608
                        chunk,
                    ) as cur:
                        deleted += await cur.fetchall()
                await self._db.commit()
            except BaseException:
                await self._db.rollback()
                raise
            for seq, type_, size in deleted:
                self._count -= 1
                self._bytes -= size
                if type_ == _RECORDING:
                    self._recording_bytes -= size
                if self._dropped is not None and seq == self._dropped.event.seq:
                    self._dropped = None
            await self._checkpoint_if_due()
            return len(deleted)

    async def _checkpoint_if_due(self) -> None:
        """``wal_checkpoint(TRUNCATE)`` once the outbox is empty or the WAL is past
        :data:`WAL_BOUND` or half the reserve: a drain never fills the disk."""
        room = self.disk()
        if room is None:
            return
        # Within half the reserve, so the WAL never takes what the reserve keeps.
        if self._count and room.wal < min(WAL_BOUND, self.reserve(room) // 2):
            return
        try:
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception as exc:  # busy or no room: the next ack tries again
            log.warning("audit outbox checkpoint failed: %s: %s", type(exc).__name__, exc)

    async def renumber(self, ids: Sequence[str], floor: int = 0) -> tuple[int, int] | None:
        """Give the stored events ``ids`` new seqs, in their order, after every seq
        handed out and at least ``floor`` (the hub refused them: it stored their seq
        under another id); return (events moved, first new seq), None if none is stored.
        """
        unique = list(dict.fromkeys(ids))
        async with self._lock:
            found: list[Any] = []
            for i in range(0, len(unique), _ACK_CHUNK):
                chunk = unique[i : i + _ACK_CHUNK]
                marks = ",".join("?" * len(chunk))
                async with self._db.execute(
                    f"SELECT seq FROM events WHERE id IN ({marks})",  # noqa: S608
                    chunk,
                ) as cur:
                    found += [seq for (seq,) in await cur.fetchall()]
            if not found:
                return None
            found.sort()
            start = max(self._next_seq, floor)
            last = start + len(found) - 1
            try:
                if self._mark is not None:
                    await self._mark.cover(last)
                # every new seq is past every stored one: no clash, whatever the order
                await self._db.executemany(
                    "UPDATE events SET seq = ? WHERE seq = ?",
                    [(start + i, old) for i, old in enumerate(found)],
                )
                await self._db.execute(  # an UPDATE does not move AUTOINCREMENT's counter
                    "UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (last,)
                )
                await self._db.commit()
            except BaseException:
                await self._db.rollback()
                raise
            self._next_seq = last + 1
            if self._dropped is not None and self._dropped.event.seq in found:
                self._dropped = None
            return len(found), start

    async def depth(self) -> tuple[int, int, float | None]:
        """(events, bytes, time of the oldest event or None) waiting for the hub."""
        async with self._lock:
            async with self._db.execute("SELECT time FROM events ORDER BY seq LIMIT 1") as cur:
                row = await cur.fetchone()
            return self._count, self._bytes, (row[0] if row else None)

    async def close(self) -> None:
        """Commit what is queued, then close the database."""
        if self._closing:
            return
        self._closing = True
        if self._lost_retry is not None:
            self._lost_retry.cancel()
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        await self._db.close()

    # -- group commit -----------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not self._queue and self._lost[0]:
                await self._write_lost()  # at close too: once, or the count dies with us
            while self._queue:
                group, self._queue = self._queue[:MAX_GROUP], self._queue[MAX_GROUP:]
                try:
                    async with self._lock:
                        results = await self._commit([(event, body) for event, body, _ in group])
                except Exception as exc:
                    log.error("audit outbox commit failed: %s: %s", type(exc).__name__, exc)
                    lost, lost_bytes = self._lost
                    self._lost = (lost + len(group), lost_bytes + sum(len(b) for _, b, _ in group))
                    for _, _, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    # Report the loss by itself once there is room, even if nothing
                    # else is appended meanwhile.
                    self._retry_lost()
                    continue
                for (_, _, future), result in zip(group, results, strict=True):
                    if not future.done():
                        future.set_result(result)
                self.changed.set()
            if self._closing:
                return

    async def _write_lost(self) -> None:
        """Store the ``audit.dropped`` count of failed commits alone (retried until it works)."""
        try:
            async with self._lock:
                await self._commit([])
        except Exception:
            if not self._closing:
                self._retry_lost()
        else:
            self.changed.set()

    def _retry_lost(self) -> None:
        """Wake the writer in :data:`LOST_RETRY` seconds, unless a wake-up is pending."""
        if self._lost_retry is None:
            self._lost_retry = asyncio.get_running_loop().call_later(LOST_RETRY, self._lost_due)

    def _lost_due(self) -> None:
        self._lost_retry = None
        self._wakeup.set()

    async def _commit(self, events: list[tuple[AuditEvent, bytes]]) -> list[AuditEvent]:
        """One transaction for a group of appends, applying the quota policy.

        In-memory counters change only once the commit succeeded.
        """
        quota, drop_old = self.quota_bytes, self.policy == "drop-recordings-first"
        total, recording, next_seq = self._bytes, self._recording_bytes, self._next_seq
        rows: list[_Row] = []
        victims: list[tuple[int, int]] = []  # (seq, size) of stored recordings to delete
        stored_recordings = _StoredRecordings(self._db)
        lost = self._lost  # failed commits: reported in this group's audit.dropped
        dropped, dropped_bytes = lost
        room = self.disk()
        reserve = self.reserve(room) if room is not None else 0
        results: list[AuditEvent] = []
        for event, body in events:
            stored = replace(event, seq=next_seq)
            size = len(body)
            is_recording = event.type == _RECORDING
            if is_recording and room is not None:
                if not outbox_quota.record_fits(room, reserve, size):
                    dropped += 1  # the disk's reserve is for session ends, not output
                    dropped_bytes += size
                    results.append(event)  # seq 0: not stored
                    continue
                room = replace(room, free=room.free - size - outbox_quota.CHUNK_OVERHEAD)
            if total + size > quota:
                # Delete old recordings only if that makes room (always, for other events).
                if drop_old and (not is_recording or total - recording + size <= quota):
                    while total + size > quota and recording > 0:
                        victim = await stored_recordings.next()
                        if victim is not None:
                            victims.append(victim)
                            victim_size = victim[1]
                        else:  # the oldest recording is one of this group's
                            row = next((r for r in rows if r.recording and not r.deleted), None)
                            if row is None:  # counters out of step: never delete blindly
                                break
                            row.deleted = True
                            victim_size = row.size
                        total -= victim_size
                        recording -= victim_size
                        dropped += 1
                        dropped_bytes += victim_size
                if is_recording and total + size > quota:
                    dropped += 1
                    dropped_bytes += size
                    results.append(event)  # seq 0: not stored
                    continue
            rows.append(_Row(next_seq, stored, size, body, is_recording, len(results)))
            results.append(stored)
            total += size
            recording += size if is_recording else 0
            next_seq += 1

        db = self._db
        kept = [r for r in rows if not r.deleted]
        dropped_state = self._dropped
        count = self._count + len(kept) - len(victims)
        try:
            if victims:
                await db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s, _ in victims])
            if dropped:
                if dropped_state is not None:
                    old = dropped_state.event
                    merged = replace(
                        old,
                        fields={
                            **old.fields,
                            "dropped": old.fields["dropped"] + dropped,
                            "dropped_bytes": old.fields["dropped_bytes"] + dropped_bytes,
                        },
                    )
                    body = _pack(merged)
                    async with db.execute(
                        "UPDATE events SET body = ?, size = ? WHERE seq = ?",
                        (body, len(body), merged.seq),
                    ) as cur:
                        updated = cur.rowcount == 1
                    if updated:
                        total += len(body) - dropped_state.size
                        dropped_state = _Dropped(merged, len(body))
                    else:
                        dropped_state = None
                if dropped_state is None:
                    note = make_event(
                        EventType.AUDIT_DROPPED,
                        node=self.node or (events[0][0].node if events else ""),
                        dropped=dropped,
                        dropped_bytes=dropped_bytes,
                        quota_bytes=quota,
                        policy=self.policy,
                    )
                    row = _Row(next_seq, replace(note, seq=next_seq), 0, b"", False)
                    row.body = _pack(row.event)
                    row.size = len(row.body)
                    kept.append(row)
                    total += row.size
                    count += 1
                    next_seq += 1
                    dropped_state = _Dropped(row.event, row.size)
                log.log(  # a warning per episode, not per chunk of a long session
                    logging.WARNING if self._dropped is None else logging.DEBUG,
                    "audit outbox over quota or disk reserve (%s): %d events (%d bytes) dropped",
                    self.policy,
                    dropped,
                    dropped_bytes,
                )
            if self._mark is not None:
                await self._mark.cover(next_seq - 1)  # before the commit
            await db.executemany(
                "INSERT INTO events (seq, id, type, time, size, body) VALUES (?, ?, ?, ?, ?, ?)",
                [(r.seq, r.event.id, r.event.type, r.event.time, r.size, r.body) for r in kept],
            )
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
        for row in rows:
            if row.deleted:  # stored in this group, then deleted again: report it as dropped
                results[row.index] = replace(row.event, seq=0)
        self._bytes, self._recording_bytes, self._count = total, recording, count
        self._next_seq, self._dropped = next_seq, dropped_state
        self._lost = (self._lost[0] - lost[0], self._lost[1] - lost[1])
        return results


class _StoredRecordings:
    """The stored ``session.data`` events, oldest first, fetched a page at a time."""

    PAGE = 256

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._page: list[tuple[int, int]] = []
        self._after = 0
        self._done = False

    async def next(self) -> tuple[int, int] | None:
        """(seq, size) of the next oldest stored recording, or None when none is left."""
        if not self._page and not self._done:
            async with self._db.execute(
                "SELECT seq, size FROM events WHERE type = 'session.data' AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (self._after, self.PAGE),
            ) as cur:
                self._page = [(seq, size) for seq, size in await cur.fetchall()]
            self._page.reverse()
            self._done = len(self._page) < self.PAGE
            if self._page:
                self._after = self._page[0][0]
        return self._page.pop() if self._page else None
