"""``CommandSession`` behind a real asyncssh server on loopback, driven by an asyncssh client.

No hub and no tunnel: this is the session layer alone (stdin/EOF, stderr, exit
status and signals, large output, pty size and window changes).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
from collections.abc import AsyncIterator
from typing import Any

import asyncssh
import pytest
from require import require_root

from edge_agent.session import PIPE_SIZE, CommandSession

ME = pwd.getpwuid(os.geteuid()).pw_name
TIMEOUT = 30


class _Server(asyncssh.SSHServer):
    def __init__(self, exits: list[int]) -> None:
        self._exits = exits
        self._login = ""

    def begin_auth(self, username: str) -> bool:
        self._login = username
        return False  # no auth: the device's auth is tested in test_authz and e2e

    def session_requested(self) -> CommandSession:
        return CommandSession(self._login, on_exit=self._exits.append)


@pytest.fixture
async def exits() -> list[int]:
    return []


@pytest.fixture
async def conn(exits: list[int]) -> AsyncIterator[Any]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        server_factory=lambda: _Server(exits),
        encoding=None,
        line_editor=False,
        allow_pty=True,
        agent_forwarding=False,
        x11_forwarding=False,
    )
    port = server.sockets[0].getsockname()[1]
    client = await asyncssh.connect(
        "127.0.0.1",
        port,
        username=ME,
        known_hosts=None,
        client_keys=None,
        agent_path=None,
        config=None,
    )
    try:
        yield client
    finally:
        client.close()
        await client.wait_closed()
        server.close()
        await server.wait_closed()


async def _run(conn: Any, command: str | None, **kwargs: Any) -> asyncssh.SSHCompletedProcess:
    return await asyncio.wait_for(conn.run(command, encoding=None, check=False, **kwargs), TIMEOUT)


async def test_exit_status_and_stdout(conn: Any, exits: list[int]) -> None:
    result = await _run(conn, "echo hi; exit 3")
    assert (result.stdout, result.stderr, result.exit_status) == (b"hi\n", b"", 3)
    assert exits == [3]


async def test_stdin_reaches_the_command_and_eof_ends_it(conn: Any) -> None:
    data = b"line one\nline two\n" + bytes(range(256))
    result = await _run(conn, "cat; echo END", input=data)
    assert result.stdout == data + b"END\n"
    assert result.exit_status == 0


async def test_stdin_written_later_then_eof(conn: Any) -> None:
    proc = await conn.create_process("wc -c", encoding=None)
    for _ in range(10):
        proc.stdin.write(b"x" * 1000)
        await proc.stdin.drain()
        await asyncio.sleep(0)
    proc.stdin.write_eof()
    result = await asyncio.wait_for(proc.wait(check=False), TIMEOUT)
    assert result.stdout.strip() == b"10000"
    assert result.exit_status == 0


async def test_stderr_goes_to_stderr(conn: Any) -> None:
    result = await _run(conn, "echo out; echo err >&2; exit 1")
    assert result.stdout == b"out\n"
    assert result.stderr == b"err\n"
    assert result.exit_status == 1


async def test_command_killed_by_a_signal_reports_the_signal(conn: Any, exits: list[int]) -> None:
    result = await _run(conn, "kill -TERM $$")
    assert result.exit_status == -1
    assert result.exit_signal is not None and result.exit_signal[0] == "TERM"
    assert exits == [-15]


async def test_client_signal_reaches_the_command(conn: Any) -> None:
    proc = await conn.create_process("echo ready; exec sleep 60", encoding=None)
    assert await asyncio.wait_for(proc.stdout.readline(), TIMEOUT) == b"ready\n"
    # the shell may catch a signal between the echo and the exec and lose it there,
    # so repeat it (bounded) until the command is gone
    waiter = asyncio.ensure_future(proc.wait(check=False))
    for _ in range(int(TIMEOUT / 0.5)):
        proc.send_signal("INT")
        done, _pending = await asyncio.wait({waiter}, timeout=0.5)
        if done:
            break
    result = await asyncio.wait_for(waiter, TIMEOUT)
    assert result.exit_signal is not None and result.exit_signal[0] == "INT"


async def test_large_output_arrives_complete(conn: Any) -> None:
    size = 5 * 1024 * 1024
    result = await _run(conn, f"head -c {size} /dev/zero | tr '\\0' 'a'; echo; echo done >&2")
    assert len(result.stdout) == size + 1
    assert result.stdout == b"a" * size + b"\n"
    assert result.stderr == b"done\n"
    assert result.exit_status == 0


async def test_large_input_and_output_both_ways(conn: Any) -> None:
    data = os.urandom(3 * 1024 * 1024)
    result = await _run(conn, "cat", input=data)
    assert result.stdout == data
    assert result.exit_status == 0


async def test_unknown_login_is_a_clear_error(conn: Any, exits: list[int]) -> None:
    require_root("the login is only looked up when the agent runs as root")
    # a second connection as a login that does not exist on this machine
    port = conn.get_extra_info("peername")[1]
    other = await asyncssh.connect(
        "127.0.0.1",
        port,
        username="no-such-login-xyz",
        known_hosts=None,
        client_keys=None,
        agent_path=None,
        config=None,
    )
    try:
        result = await _run(other, "true")
    finally:
        other.close()
    assert result.exit_status == 1
    assert b"login 'no-such-login-xyz' does not exist" in result.stderr


async def test_environment_is_minimal_and_accepts_lang(conn: Any) -> None:
    result = await _run(
        conn,
        "echo L=$LANG; echo X=$SECRET_THING; echo P=$PATH",
        env={"LANG": "C.UTF-8", "SECRET_THING": "leak"},
    )
    out = result.stdout.decode()
    assert "L=C.UTF-8" in out
    assert "X=\n" in out
    assert "P=/usr/local/sbin:" in out


async def test_pty_gets_term_and_size_and_window_changes(conn: Any) -> None:
    proc = await conn.create_process(
        None, encoding=None, term_type="xterm-test", term_size=(100, 30)
    )

    async def ask(command: bytes, marker: bytes) -> bytes:
        proc.stdin.write(command + b"\n")
        buf = b""
        while marker not in buf:
            chunk = await asyncio.wait_for(proc.stdout.read(4096), TIMEOUT)
            assert chunk, f"EOF before {marker!r}: {buf!r}"
            buf += chunk
        return buf

    out = await ask(b"echo T=$TERM; stty size | sed s/^/S=/", b"S=30 100")
    assert b"T=xterm-test" in out
    proc.change_terminal_size(120, 40)
    # the window-change message is sent before the next keystrokes on the same channel
    await ask(b"stty size | sed s/^/R=/", b"R=40 120")
    proc.stdin.write(b"exit 5\n")
    result = await asyncio.wait_for(proc.wait(check=False), TIMEOUT)
    assert result.exit_status == 5


async def test_pty_exec_merges_stderr_and_sees_a_tty(conn: Any) -> None:
    result = await _run(conn, "tty; echo err >&2", term_type="xterm", term_size=(80, 24))
    assert b"/dev/pts/" in result.stdout
    assert b"err" in result.stdout
    assert result.stderr == b""
    assert result.exit_status == 0


async def test_pty_large_output_arrives_complete(conn: Any) -> None:
    size = 2 * 1024 * 1024
    result = await _run(
        conn,
        f"stty -opost; head -c {size} /dev/zero | tr '\\0' 'b'",
        term_type="xterm",
        term_size=(80, 24),
    )
    assert result.stdout.count(b"b") == size
    assert result.exit_status == 0


async def test_client_disconnect_hangs_up_the_command(conn: Any, tmp_path: Any) -> None:
    pidfile = tmp_path / "pid"
    proc = await conn.create_process(f"echo $$ > {pidfile}; echo ready; exec sleep 60")
    assert await asyncio.wait_for(proc.stdout.readline(), TIMEOUT) == "ready\n"
    pid = int(pidfile.read_text())
    conn.close()
    await conn.wait_closed()
    for _ in range(200):  # bounded: up to 10 s for SIGHUP to land
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        os.kill(pid, 9)
        raise AssertionError("the command outlived the connection")


@pytest.mark.parametrize("pty", [False, True])
async def test_stdin_is_flow_controlled_when_the_command_does_not_read(
    conn: Any, tmp_path: Any, pty: bool
) -> None:
    """The agent must not buffer unbounded input for a command that is not reading."""
    flag = tmp_path / "go"
    term: dict[str, Any] = {"term_type": "xterm", "term_size": (80, 24)} if pty else {}
    # with a pty: raw mode, so the line discipline passes every byte and ^D is not special
    prep = "stty raw -echo; " if pty else ""
    proc = await conn.create_process(
        f"{prep}echo ready; while [ ! -e {flag} ]; do sleep 0.05; done; "
        f"head -c {8 * 1024 * 1024} | wc -c",
        encoding=None,
        **term,
    )
    assert b"ready" in await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)
    chunk = b"z" * (256 * 1024)
    sent = 0
    while sent < 64 * 1024 * 1024:
        proc.stdin.write(chunk)
        sent += len(chunk)
        try:
            await asyncio.wait_for(proc.stdin.drain(), 0.5)
        except TimeoutError:
            break  # the window closed: the agent stopped taking input
    assert sent < 32 * 1024 * 1024, f"the agent took {sent >> 20} MiB nobody read"
    flag.touch()
    while sent < 8 * 1024 * 1024:
        proc.stdin.write(chunk)
        sent += len(chunk)
    await asyncio.wait_for(proc.stdin.drain(), TIMEOUT)
    result = await asyncio.wait_for(proc.wait(check=False), TIMEOUT)
    assert result.stdout.split()[-1] == str(8 * 1024 * 1024).encode()
    assert result.exit_status == 0


@pytest.mark.parametrize("pty", [False, True])
async def test_command_does_not_inherit_ignored_signals(conn: Any, pty: bool) -> None:
    """An agent started under ``nohup`` or in the background must not pass SIG_IGN on."""
    ignored = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
    saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in ignored}
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    try:
        term: dict[str, Any] = {"term_type": "xterm", "term_size": (80, 24)} if pty else {}
        result = await _run(conn, "exec grep -E '^Sig(Ign|Blk):' /proc/self/status", **term)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    lines = result.stdout.decode().splitlines()
    masks = {k: v.strip() for k, v in (line.split(":", 1) for line in lines)}
    for name in ("SigIgn", "SigBlk"):
        mask = int(masks[name], 16)
        for sig in (*ignored, signal.SIGUSR1):
            assert not mask & (1 << (sig - 1)), f"{sig.name} in {name} of the command"


async def test_command_pipes_are_grown_for_bulk_transfers(conn: Any) -> None:
    # F_GETPIPE_SZ (1032) of the command's stdin and stdout, as the command sees them.
    probe = "import fcntl; print(fcntl.fcntl(0, 1032), fcntl.fcntl(1, 1032))"
    result = await conn.run(f"python3 -c '{probe}'", timeout=TIMEOUT)
    with open("/proc/sys/fs/pipe-max-size") as f:
        allowed = int(f.read()) >= PIPE_SIZE
    assert PIPE_SIZE > 65536  # Linux's default
    assert result.stdout.split() == [str(PIPE_SIZE if allowed else 65536)] * 2
