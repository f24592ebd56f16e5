"""One SSH session channel on the device: exec or shell, with or without a pty.

Commands run as the login's OS user when the agent runs as root; otherwise as
the agent's own user (documented in docs/edge-agent.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import pty
import pwd
import signal
import struct
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncssh

from edge_agent.outbox import QuotaExceeded
from remoteler.roleopts import EXPIRED_REASON

if TYPE_CHECKING:
    from edge_agent.audit import AgentAudit, SessionAudit

log = logging.getLogger("remoteler.agent.session")

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ACCEPT_ENV_PREFIXES = ("LANG", "LC_", "TZ", "COLORTERM")
READ_SIZE = 64 * 1024
#: pipe buffer asked for between a command and us (Linux default 64 KiB), so a
#: 256 KiB SSH packet's data is one write, not four loop wake-ups. Pipe pages count
#: against the agent's user (pipe-user-pages-soft, 64 MiB): 512 KiB per session.
PIPE_SIZE = 256 * 1024
#: Client input held for a command that is not reading it; past this the channel
#: stops reading, so the SSH window closes and the client waits (RFC 4254 §5.2).
STDIN_HIGH_WATER = 256 * 1024
#: One line to the user when the device's disk is at the outbox's reserve.
UNRECORDED_NOTICE = (
    b"remoteler: the device's disk is nearly full: this session's output is not recorded"
    b" (the drop is counted in the audit trail)\r\n"
)
END_NOT_AUDITED = (
    b"remoteler: the device could not record this session's end (its disk is full);"
    b" it is reported as failed and counted in the audit trail\r\n"
)


def _accepted_env(env: Any) -> dict[str, str]:
    out = {}
    for key, value in dict(env or {}).items():
        k = key.decode() if isinstance(key, bytes) else str(key)
        v = value.decode() if isinstance(value, bytes) else str(value)
        if k.startswith(ACCEPT_ENV_PREFIXES):
            out[k] = v
    return out


def _set_winsize(fd: int, cols: int, rows: int, px: int = 0, py: int = 0) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, px, py))


#: Dispositions a command must not inherit from the agent, as sshd resets them:
#: under ``nohup`` SIGHUP is ignored (a dropped session would leave its command
#: running), and a background start from a script ignores SIGINT and SIGQUIT.
RESET_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGPIPE)


def _reset_signals() -> None:  # runs in the child, before exec
    with contextlib.suppress(ValueError):  # only possible from the main thread
        for sig in RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _pipes_child() -> None:  # runs in the child, before exec
    """Reset signals, and ask for PIPE_SIZE buffers on the stdin and stdout pipes
    (Linux ``F_SETPIPE_SZ``; a pipe's buffer is shared by both ends). Where the
    platform or ``/proc/sys/fs/pipe-max-size`` refuses, the default stays."""
    _reset_signals()
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is not None:
        for fd in (0, 1):
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, setpipe, PIPE_SIZE)


def _signal_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


def _make_ctty() -> None:  # runs in the child after setsid()
    _reset_signals()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class CommandSession(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    def __init__(
        self,
        login: str,
        on_exit: Callable[[int], None] | None = None,
        audit: AgentAudit | None = None,
        user: str = "",
        session_id: str = "",
        via: str = "",
    ) -> None:
        self.login = login
        self._on_exit = on_exit
        self._audit = audit
        self._user = user
        self._session_id = session_id
        #: "local": reached on the device's own listener, not through the hub (offline)
        self._via = via
        self._record: SessionAudit | None = None
        self._chan: Any = None
        self._command: str | None = None
        self._term: tuple[str, tuple[int, int, int, int]] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._master: int | None = None
        self._stdin_buf = bytearray()
        self._stdin_eof = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._task: asyncio.Future[None] | None = None
        self._resumer: asyncio.Future[None] | None = None
        self._stdin_paused = False
        self._stdin_drainer: asyncio.Future[None] | None = None
        #: set by :meth:`end_locked`: the session ends with this message, exit 255
        self._locked: str | None = None
        #: set by :meth:`end_expired`: the ``reason`` of the session's end event
        self._end_reason: str | None = None

    def is_open(self) -> bool:
        """Whether the channel is still open (or not set up yet): it counts against
        :data:`~remoteler.roleopts.SESSIONS_PER_CONNECTION`."""
        return self._chan is None or not self._chan.is_closing()

    # asyncssh callbacks ---------------------------------------------------
    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        self._term = (term_type or "xterm", tuple(term_size))
        return True

    def shell_requested(self) -> bool:
        self._command = None
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        return False

    def session_started(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self._record is not None:
            self._record.input(data)
        if self._master is not None:
            self._stdin_buf += data
            self._flush_master()
        elif self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(ConnectionError):
                self._proc.stdin.write(data)
        else:
            self._stdin_buf += data
        self._pause_stdin_if_full()

    def eof_received(self) -> bool:
        """Client closed its stdin: pass EOF on, keep our side open for output."""
        self._stdin_eof = True
        if self._master is None and self._proc is not None and self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.write_eof()
        return True  # half-close (RFC 4254 section 5.3): output and exit status still flow

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._term is not None:  # a change before the pty exists applies when it does
            self._term = (self._term[0], (width, height, pixwidth, pixheight))
        if self._master is not None:
            _set_winsize(self._master, width, height, pixwidth, pixheight)

    def signal_received(self, signame: str) -> None:
        sig = getattr(signal, f"SIG{signame}", None)
        if sig is not None and self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGHUP)

    def end_locked(self, message: str) -> None:
        """A lock now covers this session: tell the user why, hang up the command."""
        if self._locked is not None or self._chan is None:
            return
        self._locked = message
        with contextlib.suppress(Exception):
            self._chan.write_stderr(f"\r\nremoteler: {message}\r\n".encode())
        proc = self._proc
        if proc is not None and proc.returncode is None:
            for sig, delay in ((signal.SIGHUP, 0.0), (signal.SIGKILL, 2.0)):
                asyncio.get_running_loop().call_later(delay, _signal_group, proc, sig)
        elif self._task is None:  # no command started yet
            with contextlib.suppress(Exception):
                self._chan.exit(255)

    def end_expired(self, message: str) -> None:
        """The certificate expired and its roles end sessions then: as a lock does
        (a session a lock already ended keeps that as the reason)."""
        if self._locked is None:
            self._end_reason = EXPIRED_REASON
        self.end_locked(message)

    # stdin flow control -------------------------------------------------------
    def _pause_stdin_if_full(self) -> None:
        backlog = len(self._stdin_buf)
        if self._master is None and self._proc is not None and self._proc.stdin is not None:
            backlog += self._proc.stdin.transport.get_write_buffer_size()
        if self._stdin_paused or backlog <= STDIN_HIGH_WATER:
            return
        self._stdin_paused = True
        self._chan.pause_reading()
        if self._master is None and self._proc is not None:
            self._stdin_drainer = asyncio.ensure_future(self._drain_stdin())
        # pty: _flush_master resumes once the buffer is written

    async def _drain_stdin(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        with contextlib.suppress(ConnectionError):
            await self._proc.stdin.drain()
        self._resume_stdin()

    def _resume_stdin(self) -> None:
        if self._stdin_paused:
            self._stdin_paused = False
            self._chan.resume_reading()

    # running the command ----------------------------------------------------
    @staticmethod
    def missing_login(login: str) -> bool:
        """True when sessions for ``login`` cannot start here: running as root, the
        agent switches to that account, which does not exist (not root: it runs
        every session as itself)."""
        if os.geteuid() != 0:
            return False
        try:
            pwd.getpwnam(login)
        except KeyError:
            return True
        return False

    def _spawn_args(self) -> tuple[list[str], dict[str, Any]]:
        me = os.geteuid() == 0
        try:
            pw = pwd.getpwnam(self.login) if me else pwd.getpwuid(os.geteuid())
        except KeyError:
            raise PermissionError(f"login {self.login!r} does not exist on this device") from None
        shell = pw.pw_shell or "/bin/sh"
        if not os.path.exists(shell):
            shell = "/bin/sh"
        env = {
            "HOME": pw.pw_dir,
            "USER": pw.pw_name,
            "LOGNAME": pw.pw_name,
            "SHELL": shell,
            "PATH": SAFE_PATH,
            **_accepted_env(self._chan.get_environment()),
        }
        if self._term is not None:
            env["TERM"] = self._term[0]
        argv = [shell, "-c", self._command] if self._command is not None else [shell, "-l"]
        kwargs: dict[str, Any] = {
            "env": env,
            "cwd": pw.pw_dir if os.path.isdir(pw.pw_dir) else "/",
            "start_new_session": True,
        }
        if me:
            kwargs.update(
                user=pw.pw_uid,
                group=pw.pw_gid,
                extra_groups=os.getgrouplist(pw.pw_name, pw.pw_gid),
            )
        return argv, kwargs

    async def _run(self) -> None:
        status = 255
        try:
            if self._locked is not None:
                raise PermissionError(self._locked)
            argv, kwargs = self._spawn_args()
            if self._audit is not None:
                record = self._audit.session(
                    self._user,
                    self.login,
                    self._session_id,
                    self._command,
                    self._term is not None,
                    via=self._via,
                )
                await record.start()  # durable before anything runs; may raise QuotaExceeded
                self._record = record
                if not record.recorded:
                    self._chan.write_stderr(UNRECORDED_NOTICE)
            if self._term is not None:
                status = await self._run_pty(argv, kwargs)
            else:
                status = await self._run_pipes(argv, kwargs)
        except (PermissionError, QuotaExceeded) as exc:
            self._chan.write_stderr(f"remoteler: {exc}\r\n".encode())
            status = 1
        except Exception as exc:
            log.exception("session failed")
            self._chan.write_stderr(f"remoteler: could not start the command: {exc}\r\n".encode())
            status = 255
        finally:
            if self._locked is not None:
                status = 255  # as ssh when the connection is cut, not the command's status
            if self._record is not None:
                self._record.end_reason = self._end_reason
                try:
                    await self._record.end(status)
                except Exception as exc:  # counted in audit.dropped once the disk has room
                    log.error("session end not audited: %s: %s", type(exc).__name__, exc)
                    with contextlib.suppress(Exception):
                        self._chan.write_stderr(END_NOT_AUDITED)
                    status = 255
            if self._on_exit is not None:
                self._on_exit(status)
            with contextlib.suppress(Exception):
                if status < 0:
                    self._chan.exit_with_signal(signal.Signals(-status).name.removeprefix("SIG"))
                else:
                    self._chan.exit(status)

    async def _run_pipes(self, argv: list[str], kwargs: dict[str, Any]) -> int:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=_pipes_child,
            **kwargs,
        )
        self._proc = proc
        assert proc.stdin and proc.stdout and proc.stderr
        if self._stdin_buf:
            proc.stdin.write(bytes(self._stdin_buf))
            self._stdin_buf.clear()
        if self._stdin_eof:
            proc.stdin.write_eof()
        if self._stdin_paused:  # paused before the process existed: resume once it has read
            self._stdin_drainer = asyncio.ensure_future(self._drain_stdin())

        async def pump(stream: asyncio.StreamReader, stderr: bool) -> None:
            while data := await stream.read(READ_SIZE):
                await self._can_write.wait()
                if self._chan.is_closing():
                    continue  # client went away: drain and discard until the process ends
                if self._record is not None:
                    self._record.output(data)
                if stderr:
                    self._chan.write_stderr(data)
                else:
                    self._chan.write(data)

        await asyncio.gather(pump(proc.stdout, False), pump(proc.stderr, True))
        return await proc.wait()

    async def _run_pty(self, argv: list[str], kwargs: dict[str, Any]) -> int:
        assert self._term is not None
        master, slave = pty.openpty()
        cols, rows, px, py = [*self._term[1], 0, 0, 0, 0][:4]
        _set_winsize(master, cols or 80, rows or 24, px, py)
        os.set_blocking(master, False)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_make_ctty, **kwargs
            )
        finally:
            os.close(slave)
        self._proc = proc
        self._master = master
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def readable() -> None:
            try:
                data = os.read(master, READ_SIZE)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    return
                data = b""  # EIO: every holder of the slave side has closed it
            if not data:
                loop.remove_reader(master)
                if not done.done():
                    done.set_result(None)
                return
            if self._chan.is_closing():
                return  # client went away: drain and discard until the command ends
            if self._record is not None:
                self._record.output(data)
            self._chan.write(data)
            if not self._can_write.is_set():
                loop.remove_reader(master)
                self._resumer = asyncio.ensure_future(self._resume_reader(master, readable))

        loop.add_reader(master, readable)
        self._flush_master()
        try:
            await done
            return await proc.wait()
        finally:
            loop.remove_reader(master)
            loop.remove_writer(master)
            self._master = None
            os.close(master)

    async def _resume_reader(self, fd: int, callback: Callable[[], None]) -> None:
        await self._can_write.wait()
        if self._master == fd:
            asyncio.get_running_loop().add_reader(fd, callback)

    def _flush_master(self) -> None:
        fd = self._master
        if fd is None or not self._stdin_buf:
            return
        loop = asyncio.get_running_loop()
        try:
            n = os.write(fd, self._stdin_buf)
            del self._stdin_buf[:n]
        except BlockingIOError:
            pass
        except OSError:
            self._stdin_buf.clear()
        if self._stdin_buf:
            loop.add_writer(fd, self._flush_master)
        else:
            loop.remove_writer(fd)
            self._resume_stdin()
