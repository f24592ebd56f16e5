"""The serial console subsystems on the device's SSH server (see :mod:`remoteler.console`).

A ``remoteler-serial`` session holds one of the operator's ports (one writer,
any read-only viewers) until its channel closes or the port goes away: port
output goes to the user and into a recording (``session.data``, as a shell's,
so ``tsh play`` replays it); the writer's input and SSH breaks (RFC 4335) go to
the port. A ``remoteler-serial-ctl`` session on the same connection changes the
writer's baud rate. Everything is gated on the certificate's ``serial_console``
permission and audited: ``serial.open`` (durable before the port is used, or
with ``allowed: false`` and the reason for a refusal) and ``serial.close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from edge_agent.audit import AgentAudit, SessionAudit
from edge_agent.authz import connection_permissions
from edge_agent.outbox import QuotaExceeded
from edge_agent.serial_ports import ConsoleRefused, ConsoleRequest, Holder
from edge_agent.sftp import NodeSession
from remoteler.audit.events import EventType
from remoteler.console import (
    CONSOLE_SUBSYSTEM,
    CONTROL_SUBSYSTEM,
    ENV_BAUD,
    ENV_PORT,
    Mode,
    break_length,
    parse_baud,
)

if TYPE_CHECKING:
    from edge_agent.serial_line import SerialConsoles, SerialLine

log = logging.getLogger("remoteler.agent.serial")

#: Connection extra info: the console this SSH connection holds for writing.
WRITER_INFO = "remoteler_serial_writer"
#: Input held while the port opens; past this the channel pauses (RFC 4254 §5.2 window).
EARLY_HIGH_WATER = 64 * 1024
#: Port output buffered for one client that is not reading it (a stalled viewer): past
#: this its output is dropped (counted in ``serial.close``); the shared port never waits.
OUTPUT_HIGH_WATER = 1024 * 1024
FALLING_BEHIND = (
    b"\r\nremoteler: this client is not reading fast enough: port output is dropped "
    b"while it is behind\r\n"
)
NOT_PERMITTED = "the serial console is not permitted by your roles (permission serial_console)"


class ConsoleAudit(SessionAudit):
    """``serial.open``/``serial.close`` and the console's output recording."""

    def __init__(self, audit: AgentAudit, who: Holder, request: ConsoleRequest, baud: int) -> None:
        super().__init__(audit, who.user, who.login, who.session_id, None, False)
        self.port = request.port
        self.mode = request.mode
        self.baud = baud
        self.breaks = 0
        #: port output not sent to a client that fell behind (bytes)
        self.dropped = 0

    async def start(self) -> None:
        """Raise QuotaExceeded (refuse-sessions) or return once ``serial.open`` is durable."""
        self.audit.check_room()
        await self.audit.emit(
            EventType.SERIAL_OPEN,
            **self.who,
            port=self.port,
            baud=self.baud,
            mode=str(self.mode),
            allowed=True,
        )
        self._timer = asyncio.ensure_future(self._flush_due())

    async def end(self, exit_status: int | None, reason: str | None = None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        chunk = self.recorder.flush()
        if chunk is not None:
            self._chunk(chunk)
        self.audit.emit_nowait(
            EventType.SERIAL_CLOSE,
            **self.who,
            port=self.port,
            baud=self.baud,
            mode=str(self.mode),
            breaks=self.breaks,
            exit_status=exit_status,
            duration=round(time.time() - self.started, 3),
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            dropped=self.dropped,
            **({"reason": reason} if reason else {}),
        )
        await self.audit.flush()


class ConsoleSession(NodeSession):
    """A session channel that also serves the serial console subsystems."""

    def __init__(self, *args: Any, consoles: SerialConsoles | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._consoles = consoles
        self._kind: str | None = None
        self._line: SerialLine | None = None
        self._request: ConsoleRequest | None = None
        self._console_audit: ConsoleAudit | None = None
        self._early = bytearray()  # input that arrived before the port was open
        self._ended: asyncio.Future[tuple[int, str]] | None = None
        self._told_read_only = False
        self._dropped = 0

    # asyncssh callbacks ---------------------------------------------------
    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem in (CONSOLE_SUBSYSTEM, CONTROL_SUBSYSTEM):
            self._kind = subsystem
            return True
        return super().subsystem_requested(subsystem)

    def session_started(self) -> None:
        if self._kind == CONSOLE_SUBSYSTEM:
            self._ended = asyncio.get_running_loop().create_future()
            self._task = asyncio.ensure_future(self._serve_console())
        elif self._kind == CONTROL_SUBSYSTEM:
            self._task = asyncio.ensure_future(self._serve_control())
        else:
            super().session_started()

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self._kind is None:
            super().data_received(data, datatype)
        elif self._kind == CONSOLE_SUBSYSTEM:
            self._console_input(data)

    def eof_received(self) -> bool:
        if self._kind is None:
            return super().eof_received()
        return True  # the port's output keeps flowing until the user closes the channel

    def break_received(self, msec: int) -> bool:
        line, audit = self._line, self._console_audit
        if self._kind != CONSOLE_SUBSYSTEM or line is None or audit is None:
            return False
        if self._request is None or self._request.mode is not Mode.READ_WRITE:
            return False
        try:
            line.send_break(break_length(msec))
        except OSError:
            return False
        audit.breaks += 1
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._kind is None:
            super().connection_lost(exc)
        else:
            self._end(0, "")

    def end_locked(self, message: str) -> None:
        if self._kind is None:
            super().end_locked(message)
            return
        self._locked = message
        self._end(255, message)

    # the console -----------------------------------------------------------
    def _end(self, status: int, message: str) -> None:
        if self._ended is not None and not self._ended.done():
            self._ended.set_result((status, message))

    def _console_input(self, data: bytes) -> None:
        request, line = self._request, self._line
        if request is not None and request.mode is Mode.READ_ONLY:
            if not self._told_read_only:  # the user's tsh sends none; another client might
                self._told_read_only = True
                self._chan.write_stderr(b"remoteler: read-only console: input is not sent\r\n")
            return
        if line is None:
            self._early += data
            if len(self._early) > EARLY_HIGH_WATER:
                self._chan.pause_reading()  # resumed once the port has taken it
            return
        if self._console_audit is not None:
            self._console_audit.input(data)
        if not line.write(data, self._chan.resume_reading):
            self._chan.pause_reading()

    def _output(self, data: bytes) -> None:
        if self._chan.is_closing():
            return
        if self._chan.get_write_buffer_size() > OUTPUT_HIGH_WATER:
            if not self._dropped:
                self._chan.write_stderr(FALLING_BEHIND)
            self._dropped += len(data)
            return
        if self._console_audit is not None:
            self._console_audit.output(data)
        self._chan.write(data)

    def _who(self) -> Holder:
        return Holder(self._user, self.login, self._session_id)

    def _refuse(self, reason: str, request: ConsoleRequest | None) -> None:
        log.info("serial console refused: %s", reason, extra={"login": self.login})
        env = self._chan.get_environment()
        if self._audit is not None:
            self._audit.emit_nowait(
                EventType.SERIAL_OPEN,
                **self._who_fields(),
                port=request.port if request else str(env.get(ENV_PORT, ""))[:256],
                baud=request.baud if request else 0,
                mode=str(request.mode) if request else "",
                allowed=False,
                reason=reason,
            )
        with contextlib.suppress(Exception):  # the client may be gone already
            self._chan.write_stderr(f"remoteler: {reason}\r\n".encode())
            self._chan.exit(1)

    def _who_fields(self) -> dict[str, str]:
        return {"user": self._user, "login": self.login, "session_id": self._session_id}

    async def _serve_console(self) -> None:
        try:
            await self._console()
        except Exception:
            log.exception("serial console failed", extra=self._who_fields())
            with contextlib.suppress(Exception):
                self._chan.write_stderr(b"remoteler: the serial console failed on the device\r\n")
                self._chan.exit(255)

    async def _console(self) -> None:
        assert self._ended is not None
        consoles, conn = self._consoles, self._chan.get_connection()
        holder = self._who()
        request = None
        try:
            if not connection_permissions(conn).serial_console:
                raise ConsoleRefused(NOT_PERMITTED)
            if self._locked is not None:
                raise ConsoleRefused(self._locked)
            if consoles is None:
                raise ConsoleRefused("this device serves no serial console")
            request = consoles.table.parse_request(self._chan.get_environment())
            consoles.claim(request, holder)
        except ConsoleRefused as exc:
            self._refuse(str(exc), request)
            return
        # The port is claimed, not opened: it is opened (or its rate set) only once
        # serial.open is durable, and a refusal leaves it as it was.
        baud = consoles.rate(request)
        record = ConsoleAudit(self._audit, holder, request, baud) if self._audit else None
        try:
            if record is not None:
                await record.start()
        except (QuotaExceeded, OSError) as exc:
            consoles.release(request.port, holder)
            self._refuse(str(exc), request)
            return
        except BaseException:
            consoles.release(request.port, holder)
            raise
        try:
            line = consoles.attach(request, holder)  # gives the claim back if it fails
        except ConsoleRefused as exc:
            log.info("serial console failed to open: %s", exc, extra=self._who_fields())
            with contextlib.suppress(Exception):
                self._chan.write_stderr(f"remoteler: {exc}\r\n".encode())
                self._chan.exit(1)
            if record is not None:
                with contextlib.suppress(Exception):
                    await record.end(1, str(exc))
            return
        if record is not None:
            record.baud = line.baud
        self._request, self._line, self._console_audit = request, line, record
        status, message = 255, "the serial console failed on the device"
        try:
            if request.mode is Mode.READ_WRITE:
                conn.set_extra_info(**{WRITER_INFO: self})
            line.subscribe(self, self._output, lambda reason: self._end(1, reason))
            mode = "read-write" if request.mode is Mode.READ_WRITE else "read-only"
            self._chan.write_stderr(
                f"remoteler: {request.port} at {line.baud} baud, {mode}\r\n".encode()
            )
            log.info("serial console open", extra={**self._who_fields(), "port": request.port})
            if self._early:
                early, self._early = bytes(self._early), bytearray()
                self._chan.resume_reading()
                self._console_input(early)
            status, message = await self._ended
        finally:
            line.unsubscribe(self)
            if conn.get_extra_info(WRITER_INFO) is self:
                conn.set_extra_info(**{WRITER_INFO: None})
            if record is not None and not line.closed:
                record.baud = line.baud  # a viewer's line may have changed rate meanwhile
            if record is not None:
                record.dropped = self._dropped
            consoles.release(request.port, holder)
            self._line = None
            if record is not None:
                with contextlib.suppress(Exception):
                    await record.end(status, self._end_reason)  # e.g. certificate expired
            log.info("serial console closed", extra={**self._who_fields(), "port": request.port})
        if not self._chan.is_closing():
            with contextlib.suppress(Exception):
                if message:
                    self._chan.write_stderr(f"\r\nremoteler: {message}\r\n".encode())
                self._chan.exit(status)

    def set_baud(self, baud: int) -> None:
        """The control channel's baud change, for the port this console writes to."""
        if self._line is None or self._line.closed:
            raise ConsoleRefused("the serial console on this connection has ended")
        try:
            self._line.set_baud(baud)
        except (OSError, ValueError) as exc:
            raise ConsoleRefused(f"the port refused {baud} baud: {exc}") from None
        if self._console_audit is not None:
            self._console_audit.baud = baud

    async def _serve_control(self) -> None:
        conn = self._chan.get_connection()
        try:
            if not connection_permissions(conn).serial_console:
                raise ConsoleRefused(NOT_PERMITTED)
            writer = conn.get_extra_info(WRITER_INFO)
            if not isinstance(writer, ConsoleSession):
                raise ConsoleRefused(
                    "no serial console open for writing on this connection "
                    "(read-only viewers cannot change the baud rate)"
                )
            try:
                baud = parse_baud(self._chan.get_environment().get(ENV_BAUD, ""))
            except ValueError as exc:
                raise ConsoleRefused(str(exc)) from None
            writer.set_baud(baud)
        except ConsoleRefused as exc:
            self._chan.write_stderr(f"remoteler: {exc}\r\n".encode())
            self._chan.exit(1)
            return
        log.info("serial baud changed", extra={**self._who_fields(), "baud": baud})
        self._chan.write(f"{baud}\n".encode())
        self._chan.exit(0)
