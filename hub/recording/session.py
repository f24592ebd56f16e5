"""One bridged session channel of the recording proxy (:mod:`hub.recording.proxy`).

:class:`UserSession` is the user's side (an asyncssh server session); when the
user starts a shell, command or subsystem it opens the same on the device's
connection (:class:`DeviceSession`, an asyncssh client session) and passes
everything across: pty (term, size, modes), env, input and EOF, window changes,
signals, breaks, output on both streams, exit status or signal. What the user is
shown is recorded by :class:`hub.recording.audit.HubSessionAudit`.

Flow control is end to end: a slow user pauses reading from the device, and a
slow device (or a full SSH window) pauses reading from the user; an audit store
that falls behind pauses the device too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Protocol

import asyncssh

from hub.recording.audit import HubSessionAudit
from remoteler.filetransfer import FILE_TRANSFER_REFUSED, is_legacy_scp
from remoteler.roleopts import EXPIRED_REASON
from remoteler.sshio import SSH_MAX_PACKET, SSH_WINDOW
from remoteler.text import printable

if TYPE_CHECKING:
    from hub.storage.api import AuditLog, Node
    from remoteler.access import Permissions

log = logging.getLogger("remoteler.hub.recording")

#: Client input held while the device's session is being opened.
PENDING_INPUT_LIMIT = 256 * 1024


def _gone() -> contextlib.suppress:
    """Around a write to the device: it may have closed its side a moment ago (its
    close is on the way and ends the session); that must not fail the connection."""
    return contextlib.suppress(OSError, asyncssh.Error)


class UpstreamError(Exception):
    """The device could not be reached or refused the hub's login (message for the user)."""


class DeviceSession(asyncssh.SSHClientSession[bytes]):
    """The device's side of one bridged session: its output goes to the user."""

    def __init__(self, user_side: UserSession) -> None:
        self._user = user_side

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self._user.from_device(data, datatype)

    def eof_received(self) -> bool:
        self._user.device_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self._user.device_exit(status, None)

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._user.device_exit(None, (signal, core_dumped, msg, lang))

    def pause_writing(self) -> None:
        self._user.pause_user()

    def resume_writing(self) -> None:
        self._user.resume_user()

    def connection_lost(self, exc: Exception | None) -> None:
        self._user.device_closed()


class ConnState(Protocol):
    """What a bridged session or a forward needs of its user connection (the
    recording proxy's ``ConnState``), and no more: no import of the proxy."""

    user: str
    node: Node
    login: str
    session_id: str
    #: the id the device records this connection's sessions under
    device_session: str
    permissions: Permissions

    @property
    def audit(self) -> AuditLog | None: ...

    async def upstream(self) -> asyncssh.SSHClientConnection: ...

    def forget(self, session: UserSession) -> None: ...


class UserSession(asyncssh.SSHServerSession[bytes]):
    """The user's side of one bridged session; opens the device's side when started."""

    def __init__(self, state: ConnState, session_id: str) -> None:
        self._state = state
        self.session_id = session_id
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._device: asyncssh.SSHClientChannel[bytes] | None = None
        self._record: HubSessionAudit | None = None
        self._command: str | None = None
        self._subsystem: str | None = None
        #: why the hub refuses this session before asking the device (its permissions)
        self._refusal: str | None = None
        self._term: tuple[str, tuple[int, int, int, int], Any] | None = None
        self._pending: list[tuple[bytes, asyncssh.DataType]] = []
        self._pending_size = 0
        self._pending_eof = False
        self._paused: set[str] = set()
        self._task: asyncio.Future[None] | None = None
        self._ending: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._user_gone = False
        #: set by :meth:`end_locked`: what the device reports after that is ignored
        self._locked = False
        #: set by :meth:`end_expired`: the ``reason`` of the session's end event
        self._end_reason = ""
        self.exit_status: int | None = None
        self.exit_signal: tuple[str, bool, str, str] | None = None

    # the user's requests ---------------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        self._term = (term_type or "xterm", tuple(term_size), dict(term_modes or {}))
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        if is_legacy_scp(command) and not self._state.permissions.file_transfer:
            self._refusal = FILE_TRANSFER_REFUSED  # scp -O: the same permission as sftp
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        """Every subsystem needs ``file_transfer`` (an sshd may serve sftp under any
        name): the hub decides, since a legacy sshd cannot read the signed rules."""
        self._subsystem = subsystem
        if not self._state.permissions.file_transfer:
            self._refusal = FILE_TRANSFER_REFUSED
        return True  # accepted even when refused, so the client shows our reason

    def session_started(self) -> None:
        if self._refusal is not None:
            log.info(
                "proxied session refused: %s", self._refusal, extra={"session_id": self.session_id}
            )
            if self._chan is not None:
                with contextlib.suppress(Exception):
                    self._chan.write_stderr(f"remoteler: {self._refusal}\r\n".encode())
                    self._chan.exit(1)
            return
        self._task = asyncio.ensure_future(self._open_device())
        self._task.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Future[None]) -> None:
        """A cancelled opening (user gone, lock) ends the session here: its record, if
        any, is ended; otherwise the connection forgets it at once."""
        if task.cancelled():
            self._finish()
            if self._ending is None:
                self._state.forget(self)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._record is not None:
            self._record.input(data)
        if self._device is not None:
            with _gone():
                self._device.write(data, datatype)
            return
        self._pending.append((data, datatype))
        self._pending_size += len(data)
        if self._pending_size > PENDING_INPUT_LIMIT and self._chan is not None:
            self._chan.pause_reading()  # the SSH window closes: the client waits

    def eof_received(self) -> bool:
        if self._device is not None:
            with _gone():
                self._device.write_eof()
        else:
            self._pending_eof = True
        return True  # half-close (RFC 4254 section 5.3): output and exit status still flow

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._term is not None:
            self._term = (self._term[0], (width, height, pixwidth, pixheight), self._term[2])
        if self._device is not None:
            with _gone():
                self._device.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signal: str) -> None:
        if self._device is not None:
            with _gone():
                self._device.send_signal(signal)

    def break_received(self, msec: int) -> bool:
        if self._device is None:
            return False
        with _gone():
            self._device.send_break(msec)
        return True

    def pause_writing(self) -> None:
        self._pause("user")

    def resume_writing(self) -> None:
        self._resume("user")

    def connection_lost(self, exc: Exception | None) -> None:
        self._user_gone = True
        if self._device is not None:
            self._device.close()  # device_closed ends the record
            return
        if self._task is not None and not self._task.done():
            self._task.cancel()  # its end forgets the session (or stores its end first)
        else:
            self._finish()
            if self._ending is None:  # nothing to store: done with it now
                self._state.forget(self)

    def end_locked(self, message: str) -> None:
        """End this session with ``message`` on stderr and status 255 (as ssh when cut)."""
        chan = self._chan
        if chan is None or self._user_gone or self._locked:
            return
        self._locked = True
        self.exit_status, self.exit_signal = 255, None
        with contextlib.suppress(Exception):
            chan.write_stderr(f"\r\nremoteler: {message}\r\n".encode())
            chan.exit(255)
        if self._device is not None:
            self._device.close()  # device_closed ends the record
        else:
            if self._task is not None and not self._task.done():
                self._task.cancel()  # no session.start, no device session after the lock
            self._finish()

    def end_expired(self, message: str) -> None:
        """The user's certificate expired and its roles end sessions then: as a lock."""
        if not self._locked:
            self._end_reason = EXPIRED_REASON
        self.end_locked(message)

    def _ending_with(self, coro: Any) -> None:
        """Start storing the end; the connection forgets the session once it is stored."""
        self._ending = asyncio.ensure_future(coro)
        self._ending.add_done_callback(lambda _: self._state.forget(self))

    @property
    def ending(self) -> asyncio.Future[None] | None:
        """Set once the session is ending: done when its end is stored and passed on."""
        return self._ending

    # flow control of the device's output ---------------------------------------------
    def _pause(self, why: str) -> None:
        if not self._paused and self._device is not None:
            self._device.pause_reading()
        self._paused.add(why)

    def _resume(self, why: str) -> None:
        self._paused.discard(why)
        if not self._paused and self._device is not None:
            self._device.resume_reading()

    def pause_user(self) -> None:
        if self._chan is not None:
            self._chan.pause_reading()

    def resume_user(self) -> None:
        if self._chan is not None:
            self._chan.resume_reading()

    async def _wait_store(self) -> None:
        assert self._record is not None
        await self._record.wait_room()
        self._resume("store")

    # the device's side ------------------------------------------------------------------
    async def _open_device(self) -> None:
        assert self._chan is not None
        state = self._state
        store = state.audit
        record: HubSessionAudit | None = None
        try:
            if store is None:  # never unrecorded in this mode
                raise UpstreamError("the hub has no audit store to record this session in")
            conn = await state.upstream()
            record = HubSessionAudit(
                store,
                user=state.user,
                login=state.login,
                session_id=self.session_id,
                node_id=state.node.id,
                node_name=state.node.name,
                command=self._command,
                subsystem=self._subsystem,
                pty=self._term is not None,
                device_session=state.device_session,
            )
            try:
                await record.start()  # durable before the device runs anything
            except Exception as exc:
                log.error(
                    "session.start not stored: %s",
                    type(exc).__name__,
                    extra={"session_id": self.session_id},
                )
                raise UpstreamError(
                    "the hub could not record this session (its audit store failed); "
                    "try again or tell the hub operator"
                ) from None
            record.bytes_in = self._pending_size  # typed while the device was being reached
            self._record = record
            kwargs: dict[str, Any] = {}
            if self._term is not None:
                kwargs = {
                    "term_type": self._term[0],
                    "term_size": self._term[1],
                    "term_modes": self._term[2],
                }
            if self._subsystem is not None:
                kwargs["subsystem"] = self._subsystem
            env: dict[bytes | str, bytes | str] = {
                k: v for k, v in self._chan.get_environment_bytes().items()
            }
            device, _ = await conn.create_session(
                lambda: DeviceSession(self),
                self._command,
                env=env or None,
                encoding=None,
                window=SSH_WINDOW,
                max_pktsize=SSH_MAX_PACKET,
                **kwargs,
            )
        except UpstreamError as exc:
            self._fail(str(exc))
            return
        except asyncssh.ChannelOpenError as exc:
            self._fail(f"node {state.node.name!r} refused the session: {printable(exc.reason)}")
            return
        except (asyncssh.Error, OSError) as exc:
            self._fail(f"session on node {state.node.name!r} failed: {type(exc).__name__}")
            return
        except asyncio.CancelledError:
            # the user left (or a lock came) while the device session was being opened
            if record is not None and self._record is None:
                self._record = record  # its start may be stored: store its end too
            self._finish()
            raise
        except Exception:
            log.exception("recording proxy session failed", extra={"session_id": self.session_id})
            self._fail("the hub could not open this session; see the hub's log")
            return
        self._device = device
        for data, datatype in self._pending:
            device.write(data, datatype)
        self._pending.clear()
        if self._pending_size > PENDING_INPUT_LIMIT:
            self._chan.resume_reading()
        if self._pending_eof:
            device.write_eof()
        if self._paused:
            device.pause_reading()

    def _fail(self, message: str) -> None:
        log.warning("proxied session refused: %s", message, extra={"session_id": self.session_id})
        if self._chan is None:
            return
        with contextlib.suppress(Exception):
            self._chan.write_stderr(f"remoteler: {message}\r\n".encode())
            self._chan.exit(255)
        self._finish()

    def from_device(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._chan is None or self._chan.is_closing():
            return
        self._chan.write(data, datatype)
        if self._record is not None and self._record.output(data) and "store" not in self._paused:
            self._pause("store")  # the audit store is behind: stop reading the device
            self._waiter = asyncio.ensure_future(self._wait_store())

    def device_eof(self) -> None:
        if self._chan is not None and not self._chan.is_closing():
            with contextlib.suppress(Exception):
                self._chan.write_eof()

    def device_exit(self, status: int | None, signal: tuple[str, bool, str, str] | None) -> None:
        if not self._locked:
            self.exit_status, self.exit_signal = status, signal

    def device_closed(self) -> None:
        """The device's session ended: store its end, then pass the exit on."""
        if self._ending is None:
            self._ending_with(self._end_and_exit())

    async def _end_and_exit(self) -> None:
        signal = self.exit_signal
        if self._record is not None:
            record, self._record = self._record, None
            await record.end(self.exit_status, signal[0] if signal else "", self._end_reason)
        chan = self._chan
        if chan is None or self._user_gone:
            return  # is_closing() is already true after our EOF: exit status still goes
        with contextlib.suppress(Exception):
            if self.exit_status is not None:
                chan.exit(self.exit_status)
            elif signal is not None:
                chan.exit_with_signal(*signal)
            else:
                chan.close()

    def _finish(self) -> None:
        """The user's side is gone (or never got a device session): end the record."""
        if self._record is not None and self._ending is None:
            record, self._record = self._record, None
            self._ending_with(record.end(self.exit_status, reason=self._end_reason))
