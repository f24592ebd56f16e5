"""The serial console subsystems behind a real asyncssh server on loopback, with a pty pair.

No hub, no tunnel, no certificate: the connection's permissions are set the way
the certificate check sets them (edge_agent.authz), and the audit goes to a real
SQLite outbox. The e2e test covers the whole path; this covers the edges.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import termios
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from edge_agent.audit import AgentAudit
from edge_agent.authz import PERMISSIONS_INFO
from edge_agent.outbox import Outbox
from edge_agent.serial_console import ConsoleSession
from edge_agent.serial_line import SerialConsoles
from remoteler.access import Permissions
from remoteler.console import CONSOLE_SUBSYSTEM, CONTROL_SUBSYSTEM, ENV_BAUD, ENV_MODE
from remoteler.roleopts import EXPIRED_REASON

ME = pwd.getpwuid(os.geteuid()).pw_name
TIMEOUT = 20


class _Server(asyncssh.SSHServer):
    def __init__(self, env: dict[str, Any]) -> None:
        self._env = env
        self._login = ""
        self._conn: Any = None

    def connection_made(self, conn: Any) -> None:
        self._conn = conn
        conn.set_extra_info(**{PERMISSIONS_INFO: Permissions(serial_console=self._env["allow"])})

    def begin_auth(self, username: str) -> bool:
        self._login = username
        return False

    def session_requested(self) -> ConsoleSession:
        session = ConsoleSession(
            self._login,
            audit=self._env["audit"],
            user="alice",
            session_id=f"s{len(self._env['sessions'])}",
            consoles=self._env["consoles"],
        )
        self._env["sessions"].append(session)
        return session


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int, str]]:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    try:
        yield master, slave, os.ttyname(slave)
    finally:
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
async def env(tmp_path: Path, pty_pair: tuple[int, int, str]) -> AsyncIterator[dict[str, Any]]:
    outbox = await Outbox.open(tmp_path / "audit.db", node="n1")
    state: dict[str, Any] = {
        "allow": True,
        "audit": AgentAudit(outbox, "n1"),
        "consoles": SerialConsoles([pty_pair[2]]),
        "sessions": [],
        "outbox": outbox,
        "pty": pty_pair,
    }
    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=lambda: _Server(state),
        encoding=None,
    )
    state["port"] = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()
        await outbox.close()


async def _connect(env: dict[str, Any]) -> Any:
    return await asyncssh.connect(
        "127.0.0.1",
        env["port"],
        username=ME,
        known_hosts=None,
        client_keys=None,
        agent_path=None,
        config=None,
    )


async def _open(conn: Any, **env: str) -> Any:
    process = await conn.create_process(subsystem=CONSOLE_SUBSYSTEM, env=env, encoding=None)
    banner = await asyncio.wait_for(process.stderr.readuntil(b"\r\n"), TIMEOUT)
    assert banner.startswith(b"remoteler: /dev/"), banner
    return process


async def _events(env: dict[str, Any], type: str) -> list[Any]:
    await env["audit"].flush()
    return [e for e in await env["outbox"].batch() if e.type == type]


async def _master_read(fd: int, want: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    got = b""
    while want not in got:
        ready = loop.create_future()
        loop.add_reader(fd, ready.set_result, None)
        try:
            await asyncio.wait_for(ready, TIMEOUT)
        finally:
            loop.remove_reader(fd)
        got += os.read(fd, 4096)
    return got


async def test_writer_changes_baud_and_breaks_a_viewer_cannot(env: dict[str, Any]) -> None:
    master, slave, _ = env["pty"]
    async with await _connect(env) as writer_conn, await _connect(env) as viewer_conn:
        writer = await _open(writer_conn, **{ENV_BAUD: "19200"})
        viewer = await _open(viewer_conn, **{ENV_MODE: "read-only"})
        assert termios.tcgetattr(slave)[5] == termios.B19200

        refused = await viewer_conn.run(subsystem=CONTROL_SUBSYSTEM, env={ENV_BAUD: "9600"})
        assert refused.exit_status == 1 and "read-only viewers cannot" in refused.stderr
        bad = await writer_conn.run(subsystem=CONTROL_SUBSYSTEM, env={ENV_BAUD: "12"})
        assert bad.exit_status == 1 and "baud rate 12 is not supported" in bad.stderr
        done = await writer_conn.run(subsystem=CONTROL_SUBSYSTEM, env={ENV_BAUD: "9600"})
        assert done.exit_status == 0
        assert termios.tcgetattr(slave)[5] == termios.B9600

        writer.channel.send_break(100)
        viewer.channel.send_break(100)  # refused: only the writer may
        viewer.stdin.write(b"viewer input")  # dropped, with one notice
        assert b"input is not sent" in await asyncio.wait_for(
            viewer.stderr.readuntil(b"\r\n"), TIMEOUT
        )
        writer.stdin.write(b"writer input")
        assert await _master_read(master, b"writer input") == b"writer input"
        os.write(master, b"to both")
        for process in (writer, viewer):
            assert await asyncio.wait_for(process.stdout.readexactly(7), TIMEOUT) == b"to both"
        writer.close()
        viewer.close()
        for process in (writer, viewer):
            await asyncio.wait_for(process.wait_closed(), TIMEOUT)
    # The device's side ends when the channel closes there: wait for the console tasks.
    tasks = [x._task for x in env["sessions"] if x._kind == CONSOLE_SUBSYSTEM]
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    closes = {e.fields["mode"]: e.fields for e in await _events(env, "serial.close")}
    assert closes["rw"]["breaks"] == 1 and closes["rw"]["baud"] == 9600
    assert closes["rw"]["bytes_in"] == len(b"writer input")
    assert closes["read-only"]["breaks"] == 0 and closes["read-only"]["bytes_in"] == 0
    assert closes["read-only"]["bytes_out"] == len(b"to both")


async def test_port_gone_ends_the_console_with_a_reason(env: dict[str, Any]) -> None:
    master, _, port = env["pty"]
    async with await _connect(env) as conn:
        process = await _open(conn)
        os.close(master)
        await asyncio.wait_for(process.wait_closed(), TIMEOUT)
        assert process.exit_status == 1
        rest = await process.stderr.read()
        assert f"serial port {port}: the port went away".encode() in rest


async def test_a_lock_ends_the_console(env: dict[str, Any]) -> None:
    async with await _connect(env) as conn:
        process = await _open(conn)
        env["sessions"][-1].end_locked("locked by admin: incident 42")
        await asyncio.wait_for(process.wait_closed(), TIMEOUT)
        assert process.exit_status == 255
        assert b"locked by admin: incident 42" in await process.stderr.read()


async def test_certificate_expiry_ends_the_console_with_the_reason(env: dict[str, Any]) -> None:
    """disconnect_expired_cert: as a lock, and ``serial.close`` says why."""
    async with await _connect(env) as conn:
        process = await _open(conn)
        env["sessions"][-1].end_expired("your certificate expired at 12:00:00 UTC")
        await asyncio.wait_for(process.wait_closed(), TIMEOUT)
        assert process.exit_status == 255
        assert b"your certificate expired" in await process.stderr.read()
    (closed,) = await _events(env, "serial.close")
    assert closed.fields["reason"] == EXPIRED_REASON


async def test_a_lock_first_is_not_reported_as_expiry(env: dict[str, Any]) -> None:
    """A lock ended the session; the certificate expiring a moment later (before
    the connection closed) must not make the audit say it was the expiry."""
    async with await _connect(env) as conn:
        process = await _open(conn)
        env["sessions"][-1].end_locked("locked by admin: incident 42")
        env["sessions"][-1].end_expired("your certificate expired at 12:00:00 UTC")
        await asyncio.wait_for(process.wait_closed(), TIMEOUT)
        assert process.exit_status == 255
    (closed,) = await _events(env, "serial.close")
    assert closed.fields.get("reason") != EXPIRED_REASON


@pytest.mark.parametrize(
    ("allow", "extra", "reason"),
    [
        (False, {}, "not permitted by your roles (permission serial_console)"),
        (True, {ENV_BAUD: "fast"}, "baud rate 'fast' is not a number"),
        (True, {"REMOTELER_SERIAL_PORT": "/dev/sda"}, "'/dev/sda' is not offered"),
    ],
)
async def test_refusals_are_one_line_and_audited(
    env: dict[str, Any], allow: bool, extra: dict[str, str], reason: str
) -> None:
    env["allow"] = allow
    async with await _connect(env) as conn:
        result = await conn.run(subsystem=CONSOLE_SUBSYSTEM, env=extra, encoding=None)
    assert result.exit_status == 1
    assert len(result.stderr.decode().splitlines()) == 1
    assert reason in result.stderr.decode()
    (opened,) = await _events(env, "serial.open")
    assert opened.fields["allowed"] is False and reason in opened.fields["reason"]
    assert opened.user == "alice" and opened.login == ME


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():  # a reader/writer callback may run again before it is removed
        future.set_result(None)


async def test_a_refused_writer_leaves_the_line_as_it_was(env: dict[str, Any]) -> None:
    """serial.open is durable before the rate changes: a full outbox refuses, nothing changes."""
    _, slave, port = env["pty"]
    async with await _connect(env) as viewer_conn, await _connect(env) as writer_conn:
        viewer = await _open(viewer_conn, **{ENV_MODE: "read-only", ENV_BAUD: "19200"})
        assert termios.tcgetattr(slave)[5] == termios.B19200
        env["outbox"].policy, env["outbox"].quota_bytes = "refuse-sessions", 1
        refused = await writer_conn.run(
            subsystem=CONSOLE_SUBSYSTEM, env={ENV_BAUD: "9600"}, encoding=None
        )
        assert refused.exit_status == 1 and b"quota" in refused.stderr.lower(), refused.stderr
        assert termios.tcgetattr(slave)[5] == termios.B19200  # the viewer's line, untouched
        assert env["consoles"].table.writer(port) is None  # the claim was given back
        viewer.close()
        await asyncio.wait_for(viewer.wait_closed(), TIMEOUT)
    tasks = [x._task for x in env["sessions"] if x._kind == CONSOLE_SUBSYSTEM]
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert env["consoles"].table.holders(port) == 0
    assert env["consoles"]._lines == {}


async def test_a_port_that_fails_to_open_ends_the_allowed_session(
    env: dict[str, Any], tmp_path: Path
) -> None:
    missing = str(tmp_path / "ttyGONE")
    env["consoles"] = SerialConsoles([missing])
    async with await _connect(env) as conn:
        result = await conn.run(
            subsystem=CONSOLE_SUBSYSTEM, env={"REMOTELER_SERIAL_PORT": missing}, encoding=None
        )
    assert result.exit_status == 1
    assert result.stderr.decode().splitlines() == [
        f"remoteler: could not open serial port {missing}: No such file or directory"
    ]
    await asyncio.wait_for(env["sessions"][-1]._task, TIMEOUT)
    (opened,) = await _events(env, "serial.open")
    (closed,) = await _events(env, "serial.close")
    assert opened.fields["allowed"] is True  # durable before the port was touched
    assert closed.fields["exit_status"] == 1 and "No such file" in closed.fields["reason"]
    assert env["consoles"].table.holders(missing) == 0


async def test_a_stalled_viewer_loses_output_instead_of_buffering_it(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A viewer that stops reading never holds up the port or the other holders."""
    monkeypatch.setattr("edge_agent.serial_console.OUTPUT_HIGH_WATER", 8192)
    master = env["pty"][0]
    total = 256 * 1024
    async with await _connect(env) as writer_conn, await _connect(env) as viewer_conn:
        writer = await _open(writer_conn)
        slow = await viewer_conn.create_process(
            subsystem=CONSOLE_SUBSYSTEM, env={ENV_MODE: "read-only"}, encoding=None,
            window=4096, max_pktsize=1024,
        )  # fmt: skip
        assert b"read-only" in await asyncio.wait_for(slow.stderr.readuntil(b"\r\n"), TIMEOUT)
        slow.channel.pause_reading()
        loop = asyncio.get_running_loop()

        async def feed() -> None:
            data = memoryview(b"x" * total)
            while data:
                ready = loop.create_future()
                loop.add_writer(master, _settle, ready)
                try:
                    await asyncio.wait_for(ready, TIMEOUT)
                finally:
                    loop.remove_writer(master)
                with contextlib.suppress(BlockingIOError):
                    data = data[os.write(master, data[:4096]) :]

        feeder = asyncio.ensure_future(feed())
        got = await asyncio.wait_for(writer.stdout.readexactly(total), TIMEOUT)
        await feeder
        assert got == b"x" * total  # the writer got everything while the viewer stalled
        session = next(x for x in env["sessions"] if x._request and x._request.mode.value != "rw")
        assert 0 < session._chan.get_write_buffer_size() <= 8192 + 4096 + 256
        slow.channel.resume_reading()
        drain = asyncio.ensure_future(slow.stdout.read())  # what it was sent before it fell behind
        assert b"not reading fast enough" in await asyncio.wait_for(
            slow.stderr.readuntil(b"behind\r\n"), TIMEOUT
        )
        for process in (writer, slow):
            process.close()
            await asyncio.wait_for(process.wait_closed(), TIMEOUT)
        await asyncio.wait_for(drain, TIMEOUT)
    tasks = [x._task for x in env["sessions"] if x._kind == CONSOLE_SUBSYSTEM]
    await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    closes = {e.fields["mode"]: e.fields for e in await _events(env, "serial.close")}
    assert closes["rw"]["dropped"] == 0 and closes["rw"]["bytes_out"] == total
    viewer = closes["read-only"]
    assert viewer["dropped"] > 0 and viewer["bytes_out"] + viewer["dropped"] == total
