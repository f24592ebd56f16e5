"""Forward mode: relay each ``ssh`` tunnel channel to the device's own sshd.

``edge-agent start --ssh-target 127.0.0.1:22`` (docs/legacy-devices.md): the SSH
session stays end to end between the user and the device's OpenSSH sshd, which
trusts the user CA and presents a host certificate from the host CA. The agent
only opens a TCP connection to the target per channel and copies bytes.

- The target is dialled *before* the channel is accepted, so a refused or silent
  target refuses the channel with a reason the user sees (within
  :data:`CONNECT_TIMEOUT`, inside the hub's 15 s wait), instead of a session
  that hangs.
- Flow control: a chunk read from one side is written and drained on the other
  before the next read (the tunnel channel's window, the socket's write buffer).
  EOF is passed on as a half-close each way; an error on either side, or the
  channel's close, closes both.
- Audit: ``ssh.forward.start`` is durable before the channel is accepted (with
  ``error`` and no end if the target cannot be reached); ``ssh.forward.end``
  carries the bytes each way. The agent cannot see inside SSH in this mode.

No asyncssh here (nor in what this imports): the agent stays light.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge_agent.outbox import DiskFull, QuotaExceeded
from remoteler.audit.events import EventType
from remoteler.wire.aio import Channel, ChannelRequest
from remoteler.wire.codes import OpenFailure

if TYPE_CHECKING:
    from edge_agent.audit import AgentAudit
    from edge_agent.locks import LockStore
    from edge_agent.resume import ResumeRegistry
    from remoteler.sshio import BytePipe

log = logging.getLogger("remoteler.agent.target")

#: How long the agent tries to reach the target before refusing the channel
#: (the hub waits 15 s for the channel to be answered).
CONNECT_TIMEOUT = 10.0
#: Largest chunk read from either side at once.
CHUNK = 256 * 1024
#: Refusals the user reads (after "node 'NAME': "; a websocket close reason holds 123 bytes).
AUDIT_FULL = "its audit outbox is full; sessions resume once it reaches the hub"
AUDIT_FAILED = "it could not record the session in its audit outbox; try again"
DISK_FULL = "its disk is full, no room to audit a session; free space on the device"


@dataclass
class Flow:
    """Bytes relayed so far on one forwarded connection."""

    bytes_in: int = 0
    """user -> target"""
    bytes_out: int = 0
    """target -> user"""


def _shut(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()


async def _user_to_target(
    channel: Channel | PipeChannel, writer: asyncio.StreamWriter, flow: Flow
) -> None:
    while data := await channel.read(CHUNK):
        flow.bytes_in += len(data)
        writer.write(data)
        await writer.drain()  # the channel's window is granted as we read: sshd paces the user
    if channel.is_closed:  # closed, not half-closed: nothing more will be read either
        writer.transport.abort()
    else:
        _shut(writer)


async def _target_to_user(
    reader: asyncio.StreamReader, channel: Channel | PipeChannel, flow: Flow
) -> None:
    while data := await reader.read(CHUNK):
        flow.bytes_out += len(data)
        channel.write(data)
        await channel.drain()  # waits while the peer's window holds us back
    channel.write_eof()


async def relay(
    channel: Channel | PipeChannel,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    flow: Flow,
    fields: dict[str, str] | None = None,
) -> None:
    """Copy bytes both ways until both sides are done or one fails, then close both.

    ``flow`` counts the bytes as they go (also if we are cancelled); ``fields``
    go into the log line of a broken connection.
    """
    tasks = [
        asyncio.ensure_future(_user_to_target(channel, writer, flow)),
        asyncio.ensure_future(_target_to_user(reader, channel, flow)),
    ]
    try:
        done: set[asyncio.Future[None]] = set()
        pending = set(tasks)
        while pending:
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            done |= finished
            if any(t.exception() is not None for t in finished):
                break
            if tasks[1] in finished and isinstance(channel, PipeChannel):
                break  # sshd hung up: a resumable session is over (the client may be gone)
        for task in done:
            if (exc := task.exception()) is not None:
                log.info("forwarded connection broken: %s", type(exc).__name__, extra=fields)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        channel.close()
        writer.close()
        with contextlib.suppress(OSError, RuntimeError):
            await writer.wait_closed()


def _who(meta: Any) -> dict[str, str]:
    """user, login and session id from the hub's channel-open (the hub authenticated them)."""
    meta = meta if isinstance(meta, dict) else {}
    return {k: str(meta.get(k) or "")[:64] for k in ("user", "login", "session_id")}


def unreachable_reason(host: str, port: int, exc: BaseException) -> str:
    """What the user reads when the target cannot be reached (no internal detail beyond it)."""
    if isinstance(exc, TimeoutError):
        why = f"no answer within {CONNECT_TIMEOUT:g}s"
    else:
        # asyncio's strerror is "Connect call failed (addr)": say what the errno means.
        errno = getattr(exc, "errno", None)
        why = os.strerror(errno) if isinstance(errno, int) else type(exc).__name__
    return f"the device's sshd at {host}:{port} is unreachable ({why}); check that it runs"


async def serve_target_channel(
    request: ChannelRequest,
    host: str,
    port: int,
    audit: AgentAudit | None,
    locks: LockStore | None = None,
    resume: ResumeRegistry | None = None,
) -> None:
    """Answer one ``ssh`` channel request by relaying it to ``host:port``.

    ``locks`` (the device's copy of the hub's locks) refuse a locked user, login
    or node, and end the relay when a lock covering it arrives, as the embedded
    server does; the user and login are the ones the hub authorised.

    ``resume`` (docs/resume.md): a channel asking for a resumable session gets one
    whose TCP connection to sshd outlives the channel; a channel resuming one is
    attached to it, and sshd is not dialled again.
    """
    meta = request.meta if isinstance(request.meta, dict) else {}
    want = meta.get("resume") if resume is not None else None
    if resume is not None and isinstance(want, str) and want != "new":
        await resume.serve(request, _no_new_session)
        return
    who = _who(request.meta)
    target = f"{host}:{port}"
    fields = {**who, "target": target}
    lock = locks.find(who["user"], who["login"]) if locks is not None else None
    if lock is not None:
        log.warning("ssh forward refused: locked", extra={**fields, "lock_id": lock.id})
        request.reject(OpenFailure.PROHIBITED, lock.refusal())
        return
    if audit is not None:
        try:
            audit.check_room()
        except QuotaExceeded as exc:  # the outbox quota (refuse-sessions) or the disk
            log.warning("ssh forward refused: %s", exc, extra=fields)
            request.reject(
                OpenFailure.RESOURCE_SHORTAGE,
                DISK_FULL if isinstance(exc, DiskFull) else AUDIT_FULL,
            )
            return
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port), CONNECT_TIMEOUT
        )
    except (OSError, TimeoutError) as exc:
        reason = unreachable_reason(host, port, exc)
        log.warning("ssh target unreachable: %s", reason, extra=fields)
        if audit is not None:
            audit.emit_nowait(EventType.SSH_FORWARD_START, **fields, error=reason)
        request.reject(OpenFailure.CONNECT_FAILED, reason)
        return
    started = time.time()
    channel: Channel | None = None
    try:
        if audit is not None:  # durable before the user's session can start
            await audit.emit(EventType.SSH_FORWARD_START, **fields)
        if resume is not None and want == "new":

            async def session(pipe: BytePipe, _meta: Mapping[str, Any]) -> None:
                ctx = (who, fields, audit, locks, started)
                await _relay_session(PipeChannel(pipe), reader, writer, *ctx)

            if not await resume.serve(request, session):
                writer.close()  # refused: the session never began
            return
        channel = request.accept()
    except Exception as exc:  # the outbox refused the event, or the tunnel went down
        log.warning("ssh forward refused: %s", type(exc).__name__, extra=fields)
        if not request.answered:
            full = isinstance(exc, QuotaExceeded)
            request.reject(OpenFailure.RESOURCE_SHORTAGE, AUDIT_FULL if full else AUDIT_FAILED)
        if channel is None and not (resume is not None and want == "new"):
            writer.close()
        return
    await _relay_session(channel, reader, writer, who, fields, audit, locks, started)


async def _no_new_session(pipe: BytePipe, meta: Mapping[str, Any]) -> None:
    raise AssertionError("a resume never starts a session")  # pragma: no cover


async def _relay_session(
    channel: Channel | PipeChannel,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    who: dict[str, str],
    fields: dict[str, str],
    audit: AgentAudit | None,
    locks: LockStore | None,
    started: float,
) -> None:
    log.info("ssh forward start", extra=fields)
    flow = Flow()
    untrack = None
    if locks is not None:
        untrack = locks.track(who["user"], who["login"], lambda _message: channel.close())
    try:
        await relay(channel, reader, writer, flow, fields)
    finally:
        if untrack is not None:
            untrack()  # also when the agent stops meanwhile (its shutdown flushes the audit queue)
        counts = {"bytes_in": flow.bytes_in, "bytes_out": flow.bytes_out}
        log.info("ssh forward end", extra={**fields, **counts})
        if audit is not None:
            duration = round(time.time() - started, 3)
            audit.emit_nowait(EventType.SSH_FORWARD_END, **fields, **counts, duration=duration)


class PipeChannel:
    """The part of :class:`~remoteler.wire.aio.Channel` :func:`relay` uses, over a
    resumable session's pipe (docs/resume.md): the session outlives any one channel."""

    def __init__(self, pipe: BytePipe) -> None:
        self._pipe = pipe
        self._closed = False

    @property
    def is_closed(self) -> bool:
        return self._closed or getattr(self._pipe, "ended", None) is not None

    async def read(self, n: int = CHUNK) -> bytes:
        return await self._pipe.recv()

    def write(self, data: bytes) -> None:
        self._pipe.send(data)

    async def drain(self) -> None:
        if self._pipe.buffered() > CHUNK:
            await self._pipe.drain()

    def write_eof(self) -> None:
        self._pipe.send_eof()

    def close(self) -> None:
        self._closed = True
        self._pipe.close()
