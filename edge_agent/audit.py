"""The agent's audit glue: events into the outbox, sessions gated on a durable start.

Every event is written to the SQLite outbox before the action it records is
acknowledged (a session does not start until its ``session.start`` is durable);
the forwarder sends them to the hub whenever a tunnel is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge_agent.outbox_quota import Admission
from remoteler.audit.events import AuditEvent, EventType, make_event
from remoteler.recording import CODEC, SessionRecorder

if TYPE_CHECKING:
    from edge_agent.outbox import Outbox

log = logging.getLogger("remoteler.agent.audit")


class AgentAudit:
    """Emits events for one node; ``emit_nowait`` keeps order through one queue."""

    def __init__(
        self, outbox: Outbox | None, node_id: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.outbox = outbox
        self.node_id = node_id
        #: the events' time: hub-corrected on a device with a wrong clock (edge_agent/clock.py)
        self.clock = clock
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def emit(self, type: EventType, **kw: Any) -> None:
        """Append and wait until the event is durable."""
        if self.outbox is None:
            return
        await self.outbox.append(make_event(type, node=self.node_id, now=self.clock(), **kw))

    def event(self, type: EventType, **kw: Any) -> AuditEvent:
        """An event of this node (for :meth:`emit_all`)."""
        return make_event(type, node=self.node_id, now=self.clock(), **kw)

    async def emit_all(self, events: list[AuditEvent]) -> None:
        """Append ``events`` in order, in one group commit; wait until all are durable
        (raises the first error)."""
        if self.outbox is None:
            return
        appends = [asyncio.ensure_future(self.outbox.append(e)) for e in events]
        results = await asyncio.gather(*appends, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def emit_nowait(self, type: EventType, **kw: Any) -> None:
        """Append in the background, in call order (for events nothing waits on)."""
        self.emit_nowait_at(None, type, **kw)

    def emit_nowait_at(self, at: float | None, type: EventType, **kw: Any) -> None:
        """:meth:`emit_nowait` for an event that happened at ``at`` (in :attr:`clock`'s
        time; None: now)."""
        if self.outbox is None:
            return
        when = self.clock() if at is None else at
        self._queue.put_nowait(make_event(type, node=self.node_id, now=when, **kw))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        assert self.outbox is not None
        while not self._queue.empty():
            event = self._queue.get_nowait()
            try:
                await self.outbox.append(event)
            except Exception:
                log.exception("audit event could not be stored", extra={"type": event.type})

    async def flush(self) -> None:
        """Wait until every background event is stored."""
        while self._writer is not None and not self._writer.done():
            await self._writer

    def check_room(self) -> Admission | None:
        """Raise QuotaExceeded if a new session could not be audited; else whether its
        recording is kept (None: no outbox)."""
        return self.outbox.admit() if self.outbox is not None else None

    def session(
        self,
        user: str,
        login: str,
        session_id: str,
        command: str | None,
        pty: bool,
        via: str = "",
    ) -> SessionAudit:
        return SessionAudit(self, user, login, session_id, command, pty, via)


class SessionAudit:
    """Events and recording of one SSH session channel."""

    #: why the session was ended from our side (``session.end`` field ``reason``)
    end_reason: str | None = None
    #: False when the disk is at its reserve: the output is dropped and counted
    recorded: bool = True

    def __init__(
        self,
        audit: AgentAudit,
        user: str,
        login: str,
        session_id: str,
        command: str | None,
        pty: bool,
        via: str = "",
    ) -> None:
        self.audit = audit
        self.who = {"user": user, "login": login, "session_id": session_id}
        #: session.start's ``via``: "local" for the device's own listener (no hub)
        self.via = via
        self.command = command
        self.pty = pty
        self.started = time.time()
        self.bytes_in = 0
        self.bytes_out = 0
        self.recorder = SessionRecorder(self.started)
        self._timer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Raise QuotaExceeded (refuse-sessions) or return once session.start is durable."""
        self.recorded = self.audit.check_room() is not Admission.UNRECORDED
        await self.audit.emit(
            EventType.SESSION_START,
            **self.who,
            command=self.command or "",
            pty=self.pty,
            **({"via": self.via} if self.via else {}),
        )
        self.opened()
        self._timer = asyncio.ensure_future(self._flush_due())

    def opened(self) -> None:
        """Count this session as running until :meth:`end` (its end needs room)."""
        if self.audit.outbox is not None:
            self.audit.outbox.open_sessions.add(self)

    def input(self, data: bytes) -> None:
        self.bytes_in += len(data)

    def output(self, data: bytes) -> None:
        self.bytes_out += len(data)
        chunk = self.recorder.output(data, time.time())
        if chunk is not None:
            self._chunk(chunk)

    def _chunk(self, chunk: bytes) -> None:
        self.audit.emit_nowait(EventType.SESSION_DATA, **self._chunk_fields(chunk))

    def _chunk_fields(self, chunk: bytes) -> dict[str, Any]:
        return {**self.who, "chunk": self.recorder.chunks, "codec": CODEC, "data": chunk}

    def _chunk_event(self, chunk: bytes) -> AuditEvent:
        return self.audit.event(EventType.SESSION_DATA, **self._chunk_fields(chunk))

    async def _flush_due(self) -> None:
        while True:
            await asyncio.sleep(self.recorder.max_chunk_seconds)
            if self.recorder.due(time.time()):
                chunk = self.recorder.flush()
                if chunk is not None:
                    self._chunk(chunk)

    async def end(self, exit_status: int | None) -> None:
        try:
            await self._end(exit_status)
        finally:
            if self.audit.outbox is not None:
                self.audit.outbox.open_sessions.discard(self)

    async def _end(self, exit_status: int | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        await self.audit.flush()  # earlier output first, in order
        # The last chunk, exec and session.end share one group commit (one fsync, not
        # three). Awaited, not in the background: if they cannot be stored (a full disk
        # took the reserve), the caller must not report the session as a success.
        events = []
        chunk = self.recorder.flush()
        if chunk is not None:
            events.append(self._chunk_event(chunk))
        if self.command is not None:
            events.append(
                self.audit.event(
                    EventType.EXEC,
                    **self.who,
                    command=self.command,
                    exit_code=exit_status,
                )
            )
        events.append(
            self.audit.event(
                EventType.SESSION_END,
                **self.who,
                exit_status=exit_status,
                duration=round(time.time() - self.started, 3),
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                **({"reason": self.end_reason} if self.end_reason else {}),
            )
        )
        await self.audit.emit_all(events)
