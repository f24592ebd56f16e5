"""Sessions the hub records itself (recording proxy mode), in the agent's format.

Events are the ones an agent writes (``session.start``, ``session.data`` chunks
from :class:`remoteler.recording.SessionRecorder`, ``exec``, ``session.end``),
so ``tsh play`` and ``tctl audit search`` read them unchanged. They are stored
under the node ``hub`` (a device can never write there: its events go under its
own id) with ``recorded_by: "hub"`` and the node's id and name as fields.

Memory stays bounded: output is cut into chunks of at most 64 KiB or 1 s, and
once more than :data:`HIGH_WATER` bytes of chunks wait for the store,
:meth:`HubSessionAudit.output` says so and the proxy stops reading from the
device until :meth:`HubSessionAudit.wait_room` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from hub.storage.api import AuditLog
from remoteler.audit.events import HUB_NODE, AuditEvent, EventType, make_event
from remoteler.recording import CODEC, SessionRecorder

log = logging.getLogger("remoteler.hub.recording")

#: Bytes of chunks waiting for the store past which the proxy pauses the device.
HIGH_WATER = 1 << 20
#: Longest wait for the last events of a session at its end, seconds.
END_TIMEOUT = 10.0


class HubSessionAudit:
    """Events and recording of one proxied session channel.

    Call :meth:`start` (durable before the session is opened on the device),
    :meth:`output` for every byte the user is shown, :meth:`input` for what the
    user typed, then :meth:`end`.
    """

    def __init__(
        self,
        store: AuditLog,
        *,
        user: str,
        login: str,
        session_id: str,
        node_id: str,
        node_name: str,
        command: str | None,
        subsystem: str | None,
        pty: bool,
        device_session: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.clock = clock
        self.who = {"user": user, "login": login, "session_id": session_id}
        self.tags = {"recorded_by": "hub", "node_id": node_id, "node_name": node_name}
        self.command = command
        self.subsystem = subsystem
        self.pty = pty
        self.device_session = device_session
        self.started = clock()
        self.bytes_in = 0
        self.bytes_out = 0
        self.recorder = SessionRecorder(self.started)
        self._queue: list[AuditEvent] = []
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._writer: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None

    def _event(self, type: EventType, **fields: Any) -> AuditEvent:
        return make_event(type, node=HUB_NODE, now=self.clock(), **self.who, **self.tags, **fields)

    async def start(self) -> None:
        """Store ``session.start``; raise whatever the store raises (refuse the session)."""
        await self.store.record(
            self._event(
                EventType.SESSION_START,
                command=self.command or "",
                subsystem=self.subsystem or "",
                pty=self.pty,
                device_session=self.device_session,
            )
        )
        self._writer = asyncio.ensure_future(self._write_loop())

    def input(self, data: bytes) -> None:
        self.bytes_in += len(data)

    def output(self, data: bytes) -> bool:
        """Record ``data``; True while the store is behind (pause the device until
        :meth:`wait_room`). Subsystem sessions (sftp) count bytes only."""
        self.bytes_out += len(data)
        if self.subsystem is not None:
            return False
        chunk = self.recorder.output(data, self.clock())
        if chunk is not None:
            self._chunk(chunk)
        return not self._room.is_set()

    async def wait_room(self) -> None:
        await self._room.wait()

    def _chunk(self, chunk: bytes) -> None:
        self._enqueue(
            self._event(
                EventType.SESSION_DATA,
                chunk=self.recorder.chunks,
                codec=CODEC,
                data=chunk,
            ),
            len(chunk),
        )

    def _enqueue(self, event: AuditEvent, size: int) -> None:
        self._queue.append(event)
        self._queued_bytes += size
        if self._queued_bytes > HIGH_WATER:
            self._room.clear()
        self._wake.set()

    async def _write_loop(self) -> None:
        """Store queued events in order; flush a chunk older than a second meanwhile."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.recorder.max_chunk_seconds)
            self._wake.clear()
            if self.recorder.due(self.clock()):
                chunk = self.recorder.flush()
                if chunk is not None:
                    self._chunk(chunk)
            await self._store_queued()

    async def _store_queued(self) -> None:
        while self._queue:
            event = self._queue[0]
            try:
                await self.store.record(event)
            except Exception as exc:  # keep the session; say so once in the hub's log
                if self._failed is None:
                    log.error(
                        "recording not stored: %s",
                        type(exc).__name__,
                        extra={"session_id": self.who["session_id"]},
                    )
                self._failed = exc
            del self._queue[0]
            data = event.fields.get("data")
            self._queued_bytes -= len(data) if isinstance(data, bytes) else 0
            if self._queued_bytes <= HIGH_WATER // 2:
                self._room.set()

    async def end(self, exit_status: int | None, exit_signal: str = "", reason: str = "") -> None:
        """Flush the recording and store ``exec`` (for a command) and ``session.end``
        (with ``reason`` when the hub ended the session, e.g. certificate expired)."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        chunk = self.recorder.flush()
        if chunk is not None:
            self._chunk(chunk)
        if self.command is not None:
            self._enqueue(
                self._event(EventType.EXEC, command=self.command, exit_code=exit_status), 0
            )
        self._enqueue(
            self._event(
                EventType.SESSION_END,
                exit_status=exit_status,
                exit_signal=exit_signal,
                duration=round(max(0.0, self.clock() - self.started), 3),
                bytes_in=self.bytes_in,
                bytes_out=self.bytes_out,
                **({"reason": reason} if reason else {}),
            ),
            0,
        )
        try:
            await asyncio.wait_for(self._store_queued(), END_TIMEOUT)
        except TimeoutError:
            log.error(
                "session end not stored in time", extra={"session_id": self.who["session_id"]}
            )
        self._room.set()
