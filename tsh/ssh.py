"""``tsh ssh``: an end-to-end SSH session to a node, carried over the hub's websocket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
import termios
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import quote

from remoteler.ca import public_key_to_openssh, split_pem_bundle
from remoteler.ca.x509 import load_certificate
from remoteler.errors import AccessDenied, HubUnreachable, NodeError, TrustError, UsageError
from remoteler.hubconn import open_ws
from remoteler.identity import UserIdentity
from remoteler.notice import NOTICE_PARAM, notice_line
from remoteler.protocol import CONNECT_SUBPROTOCOL
from remoteler.resume.handshake import RESUME_PARAM
from remoteler.sshalgs import CIPHERS, client_options
from remoteler.sshio import SSH_MAX_PACKET, SSH_WINDOW, PipeTunnel, WebSocketPipe
from remoteler.text import printable
from remoteler.tlsutil import client_context


def host_ca_known_hosts(ident: UserIdentity) -> str:
    """The host CAs (same Ed25519 keys as the hub's x509 CAs) as OpenSSH known_hosts lines.

    ``host_ca_pem`` holds two CAs while the host CA is being rotated: trust both.
    """
    lines = []
    for pem in split_pem_bundle(ident.host_ca_pem):
        pub = load_certificate(pem).public_key()
        lines.append(f"@cert-authority * {public_key_to_openssh(pub)}")  # type: ignore[arg-type]
    return "\n".join(lines)


async def open_connect_ws(
    hub: str, ident: UserIdentity, login: str, node: str, *, resume: str = ""
) -> Any:
    """The hub's relay to ``node``'s SSH server for ``login`` (routing and access checked).

    ``resume``: ``new`` asks for a resumable session, a session id resumes one
    (docs/resume.md); an older hub ignores it.
    """
    ctx = client_context(ident.host_ca_pem, ident.tls_cert, ident.key_pem)
    extra = f"&{RESUME_PARAM}={quote(resume)}" if resume else ""
    return await open_ws(
        hub,
        f"/v1/connect?node={quote(node)}&login={quote(login)}&{NOTICE_PARAM}=1{extra}",
        ctx,
        subprotocol=CONNECT_SUBPROTOCOL,
    )


def show_notice(text: str) -> None:
    """A notice from the hub (a drain, say) as one line on stderr, beside the session.

    On a terminal the line starts and ends with CR LF: a raw-mode pty session does not
    turn LF into a new line, and the cursor may be mid-line in the remote's output.
    """
    line = f"tsh: {notice_line(text)}"
    with contextlib.suppress(OSError):
        sys.stderr.write(f"\r\n{line}\r\n" if sys.stderr.isatty() else f"{line}\n")
        sys.stderr.flush()


async def open_ssh(
    hub: str,
    ident: UserIdentity,
    login: str,
    node: str,
    ciphers: list[str] | None = None,
    *,
    resume: bool = True,
    on_text: Callable[[str], None] = show_notice,
) -> Any:
    """Connect through the hub and authenticate end to end; return the asyncssh connection.

    ``ciphers`` (``tsh ssh -c``) narrows :data:`~remoteler.sshalgs.CIPHERS`, never widens it.
    ``resume``: ask for a session that survives a broken link (docs/resume.md).
    ``on_text``: where the hub's notices go (stderr; the web terminal's page). The
    connection's ``remoteler_pipe`` extra is the pipe under it (its ``close_reason``).
    """
    unknown = [c for c in ciphers or () if c not in CIPHERS]
    if unknown:
        raise UsageError(
            f"cipher {unknown[0]!r} is not offered (weak or unknown); "
            f"use one of {', '.join(CIPHERS)}"
        )
    import asyncssh

    pipe: Any
    if resume:
        from tsh.resume import open_pipe

        pipe, resumer = await open_pipe(hub, ident, login, node, on_text)
        ws = resumer.ws
    else:
        ws = await open_connect_ws(hub, ident, login, node)
        pipe = WebSocketPipe(ws, on_text=on_text)
    from remoteler.ca import private_key_to_openssh

    key = asyncssh.import_private_key(private_key_to_openssh(ident.key))
    cert = asyncssh.import_certificate(ident.ssh_cert)
    banners: list[str] = []  # the device's reason for a refusal, e.g. its wrong clock

    class BannerClient(asyncssh.SSHClient):
        def auth_banner_received(self, msg: str, lang: str) -> None:
            if len(banners) < 4:
                banners.append(printable(msg.strip()[:300], 300))

    try:
        conn = await asyncssh.connect(
            node,
            tunnel=PipeTunnel(pipe, {"peername": tuple((ws.remote_address or ("", 0))[:2])}),
            config=None,
            username=login,
            client_keys=[(key, cert)],
            known_hosts=asyncssh.import_known_hosts(host_ca_known_hosts(ident)),
            agent_path=None,
            preferred_auth="publickey",
            **{**client_options(), "encryption_algs": ciphers or list(CIPHERS)},
            window=SSH_WINDOW,
            max_pktsize=SSH_MAX_PACKET,
            connect_timeout=30,
            client_factory=BannerClient,
        )
        conn.set_extra_info(remoteler_pipe=pipe)
        return conn
    except asyncssh.PermissionDenied:
        said = f" ({'; '.join(banners)})" if banners else ""
        raise AccessDenied(
            f"node {node!r} refused login {login!r} with your certificate{said}; "
            "check 'tsh status' for your logins or run 'tsh login' again"
        ) from None
    except asyncssh.KeyExchangeFailed:
        raise NodeError(
            f"node {node!r} offers no modern SSH algorithm (curve25519, AES-GCM or chacha20, "
            "Ed25519); its sshd needs updating or its weak-only settings removed "
            "(docs/security.md)"
        ) from None
    except asyncssh.HostKeyNotVerifiable:
        raise TrustError(
            f"node {node!r} did not present a host certificate from the cluster's host CA; "
            "do not continue, tell the hub operator"
        ) from None
    except (asyncssh.Error, ConnectionError, OSError) as exc:
        reason = getattr(pipe, "close_reason", "") or getattr(ws, "close_reason", "")
        if reason:
            raise NodeError(reason) from None
        raise HubUnreachable(
            f"connection to {node!r} through the hub failed: {exc}; try again"
        ) from None


def _term_size() -> tuple[int, int]:
    """The terminal's own size (TIOCGWINSZ), as ssh does: never $COLUMNS/$LINES, which go stale."""
    for fd in (sys.stdin.fileno(), sys.stdout.fileno()):
        try:
            size = os.get_terminal_size(fd)
        except OSError:
            continue
        if size.columns and size.lines:
            return size.columns, size.lines
    return 80, 24


STDIN_CHUNK = 256 * 1024


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def stdin_chunks(*, nonblocking: bool = False) -> AsyncIterator[bytes]:
    """Our stdin in chunks until EOF or a read error, without a thread hop.

    ``nonblocking`` sets O_NONBLOCK on a pollable stdin: only where it is not a
    terminal shared with the user's shell (ssh's ProxyCommand pipe, say).
    """
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    try:
        pollable = not stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return
    if pollable and nonblocking:
        os.set_blocking(fd, False)
    while True:
        if pollable:
            try:
                await _readable(loop, fd)
            except PermissionError:  # epoll refuses /dev/null and some other devices
                pollable = False
        try:
            # Regular files and /dev/null never block: read them directly, no thread hop.
            data = os.read(fd, STDIN_CHUNK)
        except BlockingIOError:
            continue
        except OSError:
            return
        if not data:
            return
        yield data


async def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``, waiting while it is full; BrokenPipeError if
    the reader went away."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            await asyncio.sleep(0.005)
            continue
        view = view[n:]


async def _pump_stdin(process: Any) -> None:
    """Copy our stdin to the remote side; send EOF when it ends.

    One chunk is read only after the previous one fits the SSH window, so a fast
    producer (``cat bigfile |``) waits instead of piling up in memory.
    """
    async for data in stdin_chunks():
        process.stdin.write(data)
        await process.stdin.drain()
    with contextlib.suppress(Exception):
        process.stdin.write_eof()


async def _pump_out(stream: Any, fd: int) -> None:
    while data := await stream.read(65536):
        await write_all(fd, data)


@contextlib.contextmanager
def node_errors(node: str, lost_hint: str) -> Iterator[None]:
    """A refused channel or a lost connection as one NodeError line (exit 255, as ssh).

    The reasons are the device's text: only :func:`~remoteler.text.printable` reaches the
    terminal (an escape sequence in a refusal would otherwise be the user's terminal's).
    """
    import asyncssh

    try:
        yield
    except asyncssh.ChannelOpenError as exc:  # e.g. the login does not exist there
        raise NodeError(
            printable(exc.reason) if exc.reason else f"node {node!r} refused the session"
        ) from None
    except (asyncssh.DisconnectError, ConnectionError) as exc:
        reason = exc.reason if isinstance(exc, asyncssh.Error) else str(exc)
        raise NodeError(f"connection to {node!r} lost ({printable(reason)}); {lost_hint}") from None


async def run_session(conn: Any, command: list[str], want_pty: bool | None) -> int:
    """Run a command or a shell; return the exit code to use for tsh itself."""
    interactive = not command
    stdin_tty = os.isatty(sys.stdin.fileno())
    pty = want_pty if want_pty is not None else (interactive and stdin_tty)
    term_kwargs: dict[str, Any] = {}
    if pty:
        cols, rows = _term_size()
        term_kwargs = {"term_type": os.environ.get("TERM", "xterm"), "term_size": (cols, rows)}
    env = {k: v for k, v in os.environ.items() if k.startswith(("LANG", "LC_"))}
    process = await conn.create_process(
        " ".join(command) if command else None, encoding=None, env=env, **term_kwargs
    )
    loop = asyncio.get_running_loop()
    saved = None
    if pty and stdin_tty:
        saved = termios.tcgetattr(sys.stdin.fileno())
        tty.setraw(sys.stdin.fileno())
        loop.add_signal_handler(
            signal.SIGWINCH, lambda: process.change_terminal_size(*_term_size())
        )
    stdin_task = asyncio.ensure_future(_pump_stdin(process))
    try:
        await asyncio.gather(
            _pump_out(process.stdout, sys.stdout.fileno()),
            _pump_out(process.stderr, sys.stderr.fileno()),
        )
        await process.wait(check=False)
    finally:
        stdin_task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await stdin_task
        if saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
            loop.remove_signal_handler(signal.SIGWINCH)
    if process.exit_status is not None and process.exit_status >= 0:
        return int(process.exit_status)
    if process.exit_signal:
        signame = process.exit_signal[0]
        sig = getattr(signal, f"SIG{signame}", None)
        print(f"tsh: remote command killed by signal {signame}", file=sys.stderr)
        return 128 + (int(sig) if sig is not None else 0)
    print("tsh: connection to the node closed without an exit status", file=sys.stderr)
    return 255
