"""Resumable SSH sessions on the device (docs/resume.md).

A session whose ``ssh`` channel asks for it (``meta["resume"] == "new"``, set by
the hub when ``tsh`` asked) is served over a
:class:`~remoteler.resume.pipe.ResumablePipe` instead of the channel itself: its
SSH connection, pty and processes belong to the session, not to the channel.
When the channel goes (the tunnel dropped, a hub died, the link was silent), the
session is *detached* and kept for ``grace`` seconds; a later channel with
``meta["resume"] == <session id>`` from the same user and login, carrying the
session's current token, attaches again and both ends replay what the other
missed. Past the grace the session ends as a dropped one does today.

Caps: at most :data:`MAX_SESSIONS` resumable sessions (live or detached); a resume
handshake must arrive within :data:`HANDSHAKE_TIMEOUT`; ended sessions are
remembered (:data:`REMEMBER`) only to tell a late resume why it is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from remoteler.audit.events import EventType
from remoteler.resume.frames import FrameParser, ResumeProtocolError
from remoteler.resume.handshake import (
    Hello,
    Resumed,
    hello_frame,
    new_session_id,
    new_token,
    parse_resume,
    refuse_frame,
    resumed_frame,
    token_matches,
)
from remoteler.resume.pipe import ResumablePipe
from remoteler.resume.stream import DEFAULT_BUFFER, DEFAULT_QUEUE, ResumeStream
from remoteler.sshio import BytePipe, ChannelPipe
from remoteler.wire.aio import ChannelRequest
from remoteler.wire.codes import OpenFailure

if TYPE_CHECKING:
    from edge_agent.audit import AgentAudit

log = logging.getLogger("remoteler.agent.resume")

#: ``--resume-grace`` default: how long a detached session waits for its user.
DEFAULT_GRACE = 300.0
MAX_SESSIONS = 256
HANDSHAKE_TIMEOUT = 15.0
#: How long past the grace a session whose SSH connection ended waits for the ACK of
#: its last bytes (a detached one is ended by its grace timer first).
LINGER = 10.0
REMEMBER = 256

ServeSSH = Callable[[BytePipe, Mapping[str, Any]], Awaitable[None]]


@dataclass
class DeviceSession:
    id: str
    token: bytes
    user: str
    login: str
    user_key: str
    pipe: ResumablePipe
    #: the hub's id of the session that opened it: the recording's and the audit trail's
    ssh_session_id: str = ""
    resumes: int = 0
    link_gone: asyncio.Event = field(default_factory=asyncio.Event)
    grace_timer: asyncio.Task[None] | None = None
    task: asyncio.Task[None] | None = None

    def who(self) -> dict[str, str]:
        return {
            "session_id": self.ssh_session_id or self.id,
            "resume_id": self.id,
            "user": self.user,
            "login": self.login,
        }


def _identity(meta: Mapping[str, Any]) -> tuple[str, str, str]:
    return tuple(str(meta.get(k) or "")[:128] for k in ("user", "login", "user_key"))  # type: ignore[return-value]


class ResumeRegistry:
    def __init__(
        self,
        audit: AgentAudit | None,
        *,
        grace: float = DEFAULT_GRACE,
        buffer: int = DEFAULT_BUFFER,
        queue: int = DEFAULT_QUEUE,
        max_sessions: int = MAX_SESSIONS,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self.audit = audit
        self.handshake_timeout = handshake_timeout
        self.grace = grace
        self.buffer = buffer
        self.queue = queue
        self.max_sessions = max_sessions
        self.sessions: dict[str, DeviceSession] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()

    async def serve(self, request: ChannelRequest, serve_ssh: ServeSSH) -> bool:
        """Answer an ``ssh`` channel that carries ``meta["resume"]``; return when the
        channel is no longer the session's link: True if it carried one (a new
        session, whose ``serve_ssh`` runs on, or a resumed one)."""
        meta = request.meta if isinstance(request.meta, dict) else {}
        want = meta.get("resume")
        if want == "new":
            return await self._new(request, meta, serve_ssh)
        if isinstance(want, str):
            return await self._resume(request, meta, want)
        request.reject(OpenFailure.REFUSED, "bad resume request")
        return False

    async def close(self, timeout: float = 3.0) -> None:
        """The agent stops: end every session (SSH sees the end of its stream, so each
        session's end is audited), waiting at most ``timeout`` for them."""
        sessions = list(self.sessions.values())
        for session in sessions:
            session.pipe.end("the agent stopped")
        tasks = [s.task for s in sessions if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # a new session -------------------------------------------------------------
    async def _new(
        self, request: ChannelRequest, meta: dict[str, Any], serve_ssh: ServeSSH
    ) -> bool:
        if len(self.sessions) >= self.max_sessions:
            request.reject(
                OpenFailure.RESOURCE_SHORTAGE,
                f"the device holds {self.max_sessions} resumable sessions already; "
                "end one or try again later",
            )
            return False
        user, login, user_key = _identity(meta)
        sid = new_session_id()
        holder: list[DeviceSession] = []
        pipe = ResumablePipe(
            ResumeStream(self.buffer, queue_limit=self.queue),
            lambda reason: self._detached(holder[0], reason),
        )
        session = DeviceSession(
            sid, new_token(), user, login, user_key, pipe, str(meta.get("session_id") or "")[:64]
        )
        holder.append(session)
        self.sessions[sid] = session
        link = ChannelPipe(request.accept())
        hello = Hello(sid, session.token, self.grace, self.buffer)
        session.pipe.attach(link, 0, [], hello_frame(hello))
        log.info("resumable session start", extra=session.who())
        session.task = asyncio.ensure_future(self._run(session, serve_ssh, dict(meta)))
        await session.link_gone.wait()
        return True

    async def _run(self, session: DeviceSession, serve_ssh: ServeSSH, meta: dict[str, Any]) -> None:
        meta = {**meta, "session_id": str(meta.get("session_id") or session.id)}
        try:
            await serve_ssh(session.pipe, meta)
        except Exception:
            log.exception("resumable session failed", extra=session.who())
        finally:
            session.pipe.close()  # our end of stream, if SSH did not send it
            # The client gets the last bytes (the exit status, the lock's message) even
            # if the link is down right now: a resume within the grace delivers them.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.grace + LINGER):
                    await session.pipe.wait_delivered()
            failure = session.pipe.failure
            if failure is not None:  # the stream itself failed: say so, as for the grace
                self._emit(EventType.SESSION_ABANDONED, session, reason=failure[:200], grace=0.0)
            self._finish(session, failure or "its SSH connection ended")

    def _finish(self, session: DeviceSession, reason: str) -> None:
        session.pipe.end(reason)
        session.link_gone.set()
        if session.grace_timer is not None:
            session.grace_timer.cancel()
        if self.sessions.pop(session.id, None) is not None:
            self._ended[session.id] = reason
            while len(self._ended) > REMEMBER:
                self._ended.popitem(last=False)
            log.info("resumable session end: %s", reason, extra=session.who())

    # detach and grace ------------------------------------------------------------
    def _detached(self, session: DeviceSession, reason: str) -> None:
        session.link_gone.set()
        if session.pipe.stream.eof_received:  # the client had finished: SSH ends next
            return
        log.info("resumable session detached: %s", reason, extra=session.who())
        self._emit(EventType.SESSION_DETACHED, session, reason=reason[:200])
        if session.grace_timer is None or session.grace_timer.done():
            session.grace_timer = asyncio.ensure_future(self._grace(session))

    async def _grace(self, session: DeviceSession) -> None:
        await asyncio.sleep(self.grace)
        if not session.pipe.attached and session.pipe.ended is None:
            why = f"not resumed within the {_span(self.grace)} resume grace"
            log.warning("resumable session abandoned: %s", why, extra=session.who())
            self._emit(EventType.SESSION_ABANDONED, session, reason=why, grace=round(self.grace, 3))
            self._finish(session, why)

    # a resume --------------------------------------------------------------------
    async def _resume(self, request: ChannelRequest, meta: dict[str, Any], sid: str) -> bool:
        link = ChannelPipe(request.accept())
        try:
            async with asyncio.timeout(self.handshake_timeout):
                ask = await _read_resume(link)
        except (TimeoutError, ResumeProtocolError) as exc:
            log.info(
                "resume handshake failed: %s", exc or "timeout", extra={"session_id": sid[:64]}
            )
            link.close()
            return False
        session = self.sessions.get(ask.session_id)
        refusal = self._check(session, ask.session_id, sid, meta, ask.token)
        if session is None or refusal is not None:
            link.send(refuse_frame(refusal or "no such session"))
            await link.drain()
            link.close()
            return False
        gap = time.monotonic() - (session.pipe.detached_at or time.monotonic())
        if session.pipe.attached:  # the old link is still up as far as we know: newest wins
            session.pipe.detach("replaced by a newer link")
        session.token = new_token()
        session.link_gone = asyncio.Event()
        try:
            session.pipe.attach(
                link,
                ask.received,
                [],
                resumed_frame(Resumed(session.pipe.stream.received, session.token)),
            )
        except ResumeProtocolError as exc:
            link.send(refuse_frame(f"the session cannot be resumed: {exc}"))
            link.close()
            self._finish(session, f"the client's byte count did not match ({exc})")
            return False
        if session.grace_timer is not None:
            session.grace_timer.cancel()
        session.resumes += 1
        replayed = session.pipe.stream.replayed
        log.info(
            "resumable session resumed",
            extra={**session.who(), "gap": round(gap, 3), "replayed": replayed},
        )
        self._emit(
            EventType.SESSION_RESUMED,
            session,
            gap=round(gap, 3),
            bytes_replayed=replayed,
            resumes=session.resumes,
        )
        await session.link_gone.wait()
        return True

    def _check(
        self,
        session: DeviceSession | None,
        asked: str,
        routed: str,
        meta: dict[str, Any],
        token: bytes,
    ) -> str | None:
        if asked != routed:
            return "the resume request names another session than the hub routed"
        if session is None:
            ended = self._ended.get(asked)
            if ended is not None:
                return f"the session ended on the device: {ended}"
            return "the device has no such session (it restarted, or the session ended)"
        if _identity(meta) != (session.user, session.login, session.user_key):
            log.warning("resume refused: another identity", extra=session.who())
            self._emit(
                EventType.AUTH_FAILED,
                session,
                reason="resume refused: the session belongs to another user or certificate",
            )
            return "this session belongs to another user or certificate"
        if not token_matches(session.token, token):
            log.warning("resume refused: wrong token", extra=session.who())
            return "wrong resume token (each token works once)"
        return None

    def _emit(self, etype: EventType, session: DeviceSession, **fields: Any) -> None:
        if self.audit is not None:
            with contextlib.suppress(Exception):
                self.audit.emit_nowait(etype, **session.who(), **fields)


async def _read_resume(link: ChannelPipe) -> Any:
    parser = FrameParser()
    while True:
        data = await link.recv()
        if not data:
            raise ResumeProtocolError("the link closed before the resume request")
        frames = parser.feed(data)
        if frames:
            if len(frames) > 1 or parser.pending:
                raise ResumeProtocolError("data before the resume was accepted")
            return parse_resume(frames[0])


def _span(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds) // 60} min"
    return f"{round(seconds, 1):g} s"
