"""The recording proxy's session bridge in one process, over the real pieces: a hub on
loopback (TLS, websockets, SQLite), a real tunnel from a test device whose asyncssh
server trusts the user CA, and an asyncssh client as the user."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from helpers import free_port
from hubkit import FakeAgent, Hub, running_hub
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from hub.storage.api import AuditQuery
from remoteler.access import Role as AccessRole
from remoteler.ca import (
    generate_private_key,
    parse_certificate,
    private_key_to_openssh,
    private_key_to_pkcs8_pem,
    public_key_to_openssh,
)
from remoteler.locks import Lock
from remoteler.protocol import CONNECT_SUBPROTOCOL
from remoteler.sshio import ChannelPipe, PipeTunnel, WebSocketPipe
from remoteler.wire.aio import ChannelRequest
from remoteler.wire.codes import OpenFailure


def _ssh_key(key: Any) -> asyncssh.SSHKey:
    return asyncssh.import_private_key(private_key_to_openssh(key))


async def _device_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """The device's command: reports what reaches it, on stdout."""
    out = process.stdout
    if process.command == "env":
        out.write(f"LANG={process.env.get('LANG', '')}\n".encode())
        process.stderr.write(b"to stderr\n")
        process.exit(5)
        return
    if process.command and process.command.startswith("scp "):
        out.write(b"SCP\n")
        process.exit(0)
        return
    size = process.term_size
    out.write(f"TERM {process.term_type} {size[0]}x{size[1]}\n".encode())
    while True:
        try:
            data = await process.stdin.read(1024)
        except asyncssh.TerminalSizeChanged as exc:
            out.write(f"SIZE {exc.width}x{exc.height}\n".encode())
            continue
        except asyncssh.BreakReceived as exc:
            out.write(f"BREAK {exc.msec}\n".encode())
            continue
        except asyncssh.SignalReceived as exc:
            out.write(f"SIGNAL {exc.signal}\n".encode())
            process.exit_with_signal("TERM")
            return
        if not data:
            break
        out.write(b"ECHO " + data)
    process.exit(0)


class _DeviceServer(asyncssh.SSHServer):
    def connection_requested(self, host: str, port: int, orig_host: str, orig_port: int) -> bool:
        return True  # forwards: the device connects to host:port itself


class Device(FakeAgent):
    """A node: a real tunnel to the hub; each ``ssh`` channel gets an asyncssh server."""

    def __init__(self, hub: Hub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.key = generate_private_key()
        self.cert = hub.auth.host_ca.sign_ssh_host_cert(
            self.key.public_key(), key_id=name, principals=[name]
        )
        self.logins: list[str] = []
        self.refuse: str | None = None
        self.options: dict[str, Any] = {}  # e.g. a device whose sshd offers weak algorithms

    async def on_channel(self, request: ChannelRequest) -> None:
        assert request.kind == "ssh"
        if self.refuse is not None:  # as a forward-mode agent whose sshd is down
            request.reject(OpenFailure.CONNECT_FAILED, self.refuse)
            return
        channel = request.accept()
        ca_line = self.hub.auth.user_ca.ssh_public_line()
        conn = await asyncssh.connect_reverse(
            tunnel=PipeTunnel(ChannelPipe(channel)),
            config=None,
            server_factory=_DeviceServer,
            server_host_keys=[(_ssh_key(self.key), asyncssh.import_certificate(self.cert))],
            authorized_client_keys=asyncssh.import_authorized_keys(f"cert-authority {ca_line}"),
            process_factory=_device_process,
            encoding=None,
            line_editor=False,
            allow_pty=True,
            **self.options,
        )
        self.logins.append(str(conn.get_extra_info("username")))
        await conn.wait_closed()

    async def close(self) -> None:
        if self.tunnel is not None:
            await self.tunnel.close()
        if self.task is not None:
            with contextlib.suppress(Exception):
                await self.task


@pytest.fixture
async def proxied(tmp_path: Path) -> AsyncIterator[tuple[Hub, Device]]:
    async with running_hub(tmp_path, audit=True) as hub:
        device = Device(hub, "dev1")
        await device.dial(hub, device.name)
        try:
            for _ in range(200):
                if len(hub.server.registry) == 1:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the test device's tunnel did not register at the hub")
            assert await hub.storage.nodes.set_recording("dev1", "proxy") is not None
            yield hub, device
        finally:
            await device.close()


async def _user(hub: Hub, name: str = "alice", key: Any = None) -> tuple[Any, str, str]:
    """A user allowed login ``pi``: (key, ssh cert line, x509 PEM)."""
    user, _ = await hub.auth.add_user(name, ["access"], ["pi"])
    key = key or generate_private_key()
    issued = await hub.auth.issue_user_certs(user, public_key_to_openssh(key.public_key()), None)
    return key, issued.ssh_cert, issued.tls_cert


async def _ssh(
    hub: Hub, key: Any, ssh_cert: str, tls_cert: str, login: str = "pi", **options: Any
) -> asyncssh.SSHClientConnection:
    ws = await connect(
        hub.url(f"/v1/connect?node=dev1&login={login}"),
        ssl=hub.tls(tls_cert.encode(), private_key_to_pkcs8_pem(key)),
        compression=None,
        subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
    )
    return await asyncssh.connect(
        "dev1",
        tunnel=PipeTunnel(WebSocketPipe(ws)),
        config=None,
        username=login,
        client_keys=[(_ssh_key(key), asyncssh.import_certificate(ssh_cert))],
        known_hosts=asyncssh.import_known_hosts(hub.auth.host_ca.known_hosts_line("*")),
        agent_path=None,
        connect_timeout=20,
        **options,
    )


async def test_exec_env_stderr_and_exit_status_pass_through(proxied: tuple[Hub, Device]) -> None:
    hub, device = proxied
    key, cert, tls = await _user(hub)
    async with await _ssh(hub, key, cert, tls) as conn:
        result = await conn.run("env", env={"LANG": "C.UTF-8"}, encoding=None)
    assert result.exit_status == 5
    assert result.stdout == b"LANG=C.UTF-8\n" and result.stderr == b"to stderr\n"
    assert device.logins == ["pi"]  # the hub logged in to the device as the login
    assert hub.server.audit is not None
    starts = await hub.server.audit.search(AuditQuery(type="session.start", node="hub"))
    assert [e.fields["command"] for e in starts] == ["env"]


async def test_pty_window_change_break_signal_and_exit_signal(
    proxied: tuple[Hub, Device],
) -> None:
    hub, _ = proxied
    key, cert, tls = await _user(hub)
    async with await _ssh(hub, key, cert, tls) as conn:
        proc = await conn.create_process(
            "events", term_type="vt100", term_size=(91, 17), encoding=None
        )

        async def line(want: bytes) -> None:
            got = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert got.strip() == want, got

        await line(b"TERM vt100 91x17")
        proc.stdin.write(b"typed\n")
        await line(b"ECHO typed")
        proc.change_terminal_size(100, 40)
        await line(b"SIZE 100x40")
        proc.send_break(250)
        await line(b"BREAK 250")
        proc.send_signal("INT")
        await line(b"SIGNAL INT")
        await asyncio.wait_for(proc.wait_closed(), 10)
    assert proc.exit_signal is not None and proc.exit_signal[0] == "TERM"
    assert hub.server.audit is not None
    ends = await hub.server.audit.search(AuditQuery(type="session.end", node="hub"))
    assert [e.fields["exit_signal"] for e in ends] == ["TERM"]


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _events(hub: Hub, type: str, count: int = 1) -> list[Any]:
    """The hub's ``type`` events once there are ``count`` (some are stored in the background)."""
    assert hub.server.audit is not None
    found: list[Any] = []
    for _ in range(100):
        found = await hub.server.audit.search(AuditQuery(type=type, node="hub"))
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(found)} {type} at the hub, not {count}")


async def test_port_forwarding_goes_through_the_device_and_is_audited(
    proxied: tuple[Hub, Device],
) -> None:
    hub, _ = proxied
    server, port = await _echo_server()
    key, cert, tls = await _user(hub)
    try:
        async with await _ssh(hub, key, cert, tls) as conn:
            reader, writer = await conn.open_connection("127.0.0.1", port)
            writer.write(b"ping" * 1000)
            writer.write_eof()
            echoed = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert echoed == b"ping" * 1000
            # a port nobody listens on: the device's own reason, named after the node
            with pytest.raises(asyncssh.ChannelOpenError) as info:
                await conn.open_connection("127.0.0.1", free_port())
            assert info.value.reason.startswith("node 'dev1': ")
    finally:
        server.close()
    start = (await _events(hub, "port.forward"))[0]
    assert (start.user, start.fields["port"], start.fields["recorded_by"]) == ("alice", port, "hub")
    ends = await _events(hub, "port.forward.end", 2)  # the refused one, the one that worked
    done = next(e for e in ends if not e.fields["error"])
    assert done.fields["bytes_in"] == 4000 and done.fields["bytes_out"] == 4000
    assert any(e.fields["error"] for e in ends)  # the refused one


async def test_port_forwarding_needs_the_permission_in_the_users_certificate(
    proxied: tuple[Hub, Device],
) -> None:
    hub = proxied[0]
    user, _ = await hub.auth.add_user("noforward", ["access"], ["pi"])
    key = generate_private_key()
    issued = await hub.auth.issue_user_certs(user, public_key_to_openssh(key.public_key()), None)
    parsed = parse_certificate(issued.ssh_cert)
    extensions = {k: v for k, v in parsed.extensions.items() if k != "permit-port-forwarding"}
    cert = hub.auth.user_ca.sign_ssh_user_cert(
        key.public_key(), key_id="noforward", principals=["pi"], ttl_seconds=600,
        extensions=extensions,
    )  # fmt: skip
    async with await _ssh(hub, key, cert, issued.tls_cert) as conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", 22)
    assert hub.server.audit is not None
    assert await hub.server.audit.search(AuditQuery(type="port.forward", node="hub")) == []


async def test_another_users_ssh_certificate_is_refused_at_the_hub(
    proxied: tuple[Hub, Device],
) -> None:
    """Alice's websocket with Bob's SSH certificate: the hub refuses and says why."""
    hub, device = proxied
    alice_key, _, alice_tls = await _user(hub, "alice")
    _, bob_cert, _ = await _user(hub, "bob", alice_key)  # Bob's cert for Alice's key
    with pytest.raises(asyncssh.PermissionDenied):
        await _ssh(hub, alice_key, bob_cert, alice_tls)
    assert device.logins == []  # the device was never asked
    assert hub.server.audit is not None
    failed = []
    for _ in range(100):
        failed = await hub.server.audit.search(AuditQuery(type="auth.failed", node="hub"))
        if failed:
            break
        await asyncio.sleep(0.05)
    assert failed and "'bob'" in failed[0].fields["reason"]


async def test_garbage_instead_of_ssh_closes_only_that_connection(
    proxied: tuple[Hub, Device],
) -> None:
    hub, device = proxied
    key, cert, tls = await _user(hub)
    async with connect(
        hub.url("/v1/connect?node=dev1&login=pi"),
        ssl=hub.tls(tls.encode(), private_key_to_pkcs8_pem(key)),
        compression=None,
        subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
    ) as ws:
        await ws.send(b"SSH-2.0-x\r\n" + bytes(range(256)) * 512)
        with pytest.raises(ConnectionClosed):
            while True:  # the hub's banner, then it hangs up
                await asyncio.wait_for(ws.recv(), 10)
    assert device.logins == []
    async with await _ssh(hub, key, cert, tls) as conn:  # the hub still serves
        assert (await conn.run("env", encoding=None)).exit_status == 5


async def test_a_lock_ends_a_proxied_session(
    proxied: tuple[Hub, Device], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, _ = proxied
    monkeypatch.setattr(hub.server.locks, "grace", 0.1)
    key, cert, tls = await _user(hub)
    async with await _ssh(hub, key, cert, tls) as conn:
        proc = await conn.create_process("events", term_type="vt100", encoding=None)
        assert (await asyncio.wait_for(proc.stdout.readline(), 10)).startswith(b"TERM")
        await hub.storage.locks.add(Lock("0123456789ab", "user", "alice", "incident", time.time()))
        await asyncio.wait_for(conn.wait_closed(), 15)
    assert proc.exit_status == 255  # as ssh when a session is cut
    assert b"incident" in await proc.stderr.read()  # the lock's message, before the cut
    assert hub.server.audit is not None
    for _ in range(100):  # the hub's record of the cut session is closed too
        if await hub.server.audit.search(AuditQuery(type="session.end", node="hub")):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("no session.end for the locked session")


class FullStore:
    """An audit store whose disk is full."""

    async def record(self, event: object) -> None:
        raise OSError(28, "No space left on device")


async def test_a_session_the_hub_cannot_record_is_refused(
    proxied: tuple[Hub, Device], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, _ = proxied
    key, cert, tls = await _user(hub)
    monkeypatch.setattr(hub.server, "audit", FullStore())
    async with await _ssh(hub, key, cert, tls) as conn:
        result = await conn.run("env", encoding=None)
    assert result.exit_status == 255
    assert b"could not record this session" in result.stderr
    monkeypatch.setattr(hub.server, "audit", None)
    async with await _ssh(hub, key, cert, tls) as conn:
        result = await conn.run("env", encoding=None)
    assert result.exit_status == 255 and b"no audit store" in result.stderr


async def test_the_devices_refusal_reaches_the_user(proxied: tuple[Hub, Device]) -> None:
    hub, device = proxied
    device.refuse = "the device's SSH server at 127.0.0.1:22 cannot be reached\x1b[2J"
    key, cert, tls = await _user(hub)
    async with await _ssh(hub, key, cert, tls) as conn:
        result = await conn.run("env", encoding=None)
    assert result.exit_status == 255
    assert result.stderr == (
        b"remoteler: node 'dev1': the device's SSH server at 127.0.0.1:22 cannot be reached?[2J\r\n"
    )  # text only (remoteler.text.printable): no escape sequence reaches the terminal


async def test_the_devices_refusal_is_printable_in_forward_mode_too(
    proxied: tuple[Hub, Device],
) -> None:
    hub, device = proxied
    await hub.storage.nodes.set_recording("dev1", "off")
    device.refuse = "sshd down\x1b]52;c;aGk=\x07"
    key, _, tls = await _user(hub)
    async with connect(
        hub.url("/v1/connect?node=dev1&login=pi"),
        ssl=hub.tls(tls.encode(), private_key_to_pkcs8_pem(key)),
        compression=None,
        subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
    ) as ws:
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (
        4502,
        "node 'dev1': sshd down?]52;c;aGk=?",
    )


async def test_losing_the_device_ends_the_users_connection(proxied: tuple[Hub, Device]) -> None:
    hub, device = proxied
    key, cert, tls = await _user(hub)
    async with await _ssh(hub, key, cert, tls) as conn:
        proc = await conn.create_process("events", term_type="vt100", encoding=None)
        assert (await asyncio.wait_for(proc.stdout.readline(), 10)).startswith(b"TERM")
        await device.close()  # the agent goes away
        await asyncio.wait_for(conn.wait_closed(), 15)
    assert proc.exit_status is None or proc.exit_status == -1  # cut: no status from the device


async def test_file_transfer_and_forwarding_off_in_the_roles_are_enforced_at_the_hub(
    proxied: tuple[Hub, Device],
) -> None:
    """A legacy sshd cannot read the signed rules: the hub refuses sftp, every other
    subsystem, legacy scp and forwards itself when the roles leave them out."""
    hub, _ = proxied
    await hub.storage.roles.put(
        AccessRole(
            "no-files",
            logins=("pi",),
            node_labels={"*": ("*",)},
            permissions={"file_transfer": False, "port_forwarding": False},
        )
    )
    user, _ = await hub.auth.add_user("carol", ["no-files"], ["pi"])
    key = generate_private_key()
    issued = await hub.auth.issue_user_certs(user, public_key_to_openssh(key.public_key()), None)
    # permit-port-forwarding in the certificate, port_forwarding false in its signed rules
    parsed = parse_certificate(issued.ssh_cert)
    cert = hub.auth.user_ca.sign_ssh_user_cert(
        key.public_key(), key_id="carol", principals=["pi"], ttl_seconds=600,
        extensions={**parsed.extensions, "permit-port-forwarding": ""},
    )  # fmt: skip
    refused = b"remoteler: file transfer is not permitted by your roles\r\n"
    async with await _ssh(hub, key, cert, issued.tls_cert) as conn:
        for command in ("scp -t /tmp/x", "/usr/bin/scp -r -f /etc"):
            result = await conn.run(command, encoding=None)
            assert (result.exit_status, result.stderr) == (1, refused)
        for subsystem in ("sftp", "other"):
            proc = await conn.create_process(subsystem=subsystem, encoding=None)
            await asyncio.wait_for(proc.wait_closed(), 10)
            assert (proc.exit_status, await proc.stderr.read()) == (1, refused)
        with pytest.raises(asyncssh.ChannelOpenError) as info:
            await conn.open_connection("127.0.0.1", 22)
        assert info.value.reason == "port forwarding is not permitted by your roles"
        assert (await conn.run("env", encoding=None)).exit_status == 5  # a command still runs
    assert hub.server.audit is not None
    starts = await hub.server.audit.search(AuditQuery(type="session.start", node="hub"))
    assert [e.fields["command"] for e in starts] == ["env"]
    assert await hub.server.audit.search(AuditQuery(type="port.forward", node="hub")) == []


async def test_legacy_scp_passes_when_the_roles_allow_file_transfer(
    proxied: tuple[Hub, Device],
) -> None:
    hub, _ = proxied
    key, cert, tls = await _user(hub)
    async with await _ssh(hub, key, cert, tls) as conn:
        result = await conn.run("scp -t /tmp/x", encoding=None)
    assert (result.exit_status, result.stdout) == (0, b"SCP\n")  # the device ran it


async def test_a_source_address_certificate_is_refused_when_the_peer_is_unknown(
    proxied: tuple[Hub, Device], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub cannot check source-address without the user's address: it refuses,
    rather than checking it against a stand-in 127.0.0.1."""
    from hub.recording import proxy as recording

    hub, device = proxied
    user, _ = await hub.auth.add_user("dave", ["access"], ["pi"])
    key = generate_private_key()
    issued = await hub.auth.issue_user_certs(user, public_key_to_openssh(key.public_key()), None)
    cert = hub.auth.user_ca.sign_ssh_user_cert(
        key.public_key(), key_id="dave", principals=["pi"], ttl_seconds=600,
        extensions=parse_certificate(issued.ssh_cert).extensions,
        critical_options={"source-address": "127.0.0.1/32"},
    )  # fmt: skip
    async with await _ssh(hub, key, cert, issued.tls_cert) as conn:  # the address is known
        assert (await conn.run("env", encoding=None)).exit_status == 5
    monkeypatch.setattr(recording, "peer_host", lambda ws: "")
    with pytest.raises(asyncssh.PermissionDenied):
        await _ssh(hub, key, cert, issued.tls_cert)
    assert device.logins == ["pi"]


async def test_changing_the_recording_mode_ends_the_open_connections_of_the_other_mode(
    proxied: tuple[Hub, Device], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tctl nodes set --recording`` (another process) ends the node's relays opened in
    the other mode: a long-lived connection cannot stay unrecorded after a switch."""
    from hub.storage.sqlite import open_sqlite

    hub, _ = proxied
    monkeypatch.setattr(hub.server.locks, "interval", 0.05)
    key, cert, tls = await _user(hub)
    tctl = await open_sqlite(tmp_path / "hubdata")
    try:
        for now in ("off", "proxy"):  # proxied -> off, then end to end -> proxy
            async with await _ssh(hub, key, cert, tls) as conn:
                proc = await conn.create_process("events", term_type="vt100", encoding=None)
                assert (await asyncio.wait_for(proc.stdout.readline(), 10)).startswith(b"TERM")
                # the same mode written again is no change (a few polls pass)
                await tctl.nodes.set_recording("dev1", "proxy" if now == "off" else "off")
                await asyncio.sleep(0.2)
                assert not proc.is_closing()
                await tctl.nodes.set_recording("dev1", now)
                await asyncio.wait_for(conn.wait_closed(), 10)
            if now == "off":  # the hub's own session tells the user why
                assert proc.exit_status == 255
                assert b"this node's recording mode changed; connect again" in (
                    await proc.stderr.read()
                )
    finally:
        await tctl.close()


class _SlowEnds:
    """The hub's audit store, with ``session.end`` held until ``gate`` is set."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.gate = asyncio.Event()
        self.ends = 0

    async def record(self, event: Any) -> None:
        if event.type == "session.end":
            await self.gate.wait()
            self.ends += 1
        await self.store.record(event)


async def test_sessions_are_forgotten_once_ended_and_the_node_stays_busy_until_then(
    proxied: tuple[Hub, Device], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hub.recording import proxy as recording

    hub, _ = proxied
    states: list[Any] = []

    class Captured(recording.ConnState):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            states.append(self)

    monkeypatch.setattr(recording, "ConnState", Captured)
    key, cert, tls = await _user(hub)
    async with await _ssh(hub, key, cert, tls) as conn:
        for _ in range(3):  # one long multiplexed connection
            assert (await conn.run("env", encoding=None)).exit_status == 5
        assert states[0].open_sessions == []  # not kept until the connection ends
        slow = _SlowEnds(hub.server.audit)
        proxy = states[0].proxy  # the connection's proxy was given the hub's store
        monkeypatch.setattr(proxy, "deps", dataclasses.replace(proxy.deps, audit=slow))
        proc = await conn.create_process("events", term_type="vt100", encoding=None)
        assert (await asyncio.wait_for(proc.stdout.readline(), 10)).startswith(b"TERM")
        live = hub.server.registry.get(states[0].node.id)
        assert live is not None
    # the user hung up; the session's end is not stored yet: the node is not idle
    for _ in range(200):
        if states[0].open_sessions and states[0].open_sessions[0].ending is not None:
            break
        await asyncio.sleep(0.01)
    assert live.sessions == 1 and not live.idle.is_set()
    slow.gate.set()
    await asyncio.wait_for(live.idle.wait(), 10)
    assert slow.ends == 1 and states[0].open_sessions == []


async def test_closing_the_connection_state_lets_a_cancellation_through() -> None:
    """Hub shutdown cancels serve(): close() must not swallow that cancellation."""
    from hub.recording.proxy import ConnState

    state = ConnState(None, "alice", None, "pi", "sid", None, "")  # type: ignore[arg-type]
    release = asyncio.Event()

    async def slow_upstream() -> Any:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # a slow cleanup after the cancel

    state._upstream = asyncio.ensure_future(slow_upstream())
    closer = asyncio.ensure_future(state.close())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    closer.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert closer.cancelled()


async def test_a_lock_cancels_a_session_still_waiting_for_the_device() -> None:
    from hub.recording.session import UserSession

    class Chan:
        def __init__(self) -> None:
            self.stderr = b""
            self.status: int | None = None

        def write_stderr(self, data: bytes) -> None:
            self.stderr += data

        def exit(self, status: int) -> None:
            self.status = status

    class State:
        forgotten: list[Any] = []

        def forget(self, session: Any) -> None:
            self.forgotten.append(session)

    session = UserSession(State(), "sid")  # type: ignore[arg-type]
    chan = Chan()
    session.connection_made(chan)  # type: ignore[arg-type]
    waiting = asyncio.ensure_future(asyncio.Event().wait())  # as _open_device on the device
    waiting.add_done_callback(session._opened)
    session._task = waiting
    session.end_locked("session ended: locked")
    await asyncio.wait([waiting], timeout=5)
    await asyncio.sleep(0)  # its done callbacks run
    assert waiting.cancelled()  # no session.start, no device session after the lock
    assert State.forgotten == [session]  # nothing to store: the connection lets it go
    assert (chan.status, chan.stderr) == (255, b"\r\nremoteler: session ended: locked\r\n")


async def test_a_proxied_login_cannot_use_another_principal_of_the_certificate(
    proxied: tuple[Hub, Device],
) -> None:
    """The websocket was authorised for ``pi``: the certificate also names ``root``, but
    the hub refuses an SSH login as ``root`` on that connection (and says why)."""
    hub, device = proxied
    user, _ = await hub.auth.add_user("erin", ["access"], ["pi", "root"])
    key = generate_private_key()
    issued = await hub.auth.issue_user_certs(user, public_key_to_openssh(key.public_key()), None)
    assert {"pi", "root"} <= set(parse_certificate(issued.ssh_cert).principals)
    ws = await connect(
        hub.url("/v1/connect?node=dev1&login=pi"),
        ssl=hub.tls(issued.tls_cert.encode(), private_key_to_pkcs8_pem(key)),
        compression=None,
        subprotocols=[CONNECT_SUBPROTOCOL],  # type: ignore[list-item]
    )
    with pytest.raises(asyncssh.PermissionDenied):
        await asyncssh.connect(
            "dev1",
            tunnel=PipeTunnel(WebSocketPipe(ws)),
            config=None,
            username="root",
            client_keys=[(_ssh_key(key), asyncssh.import_certificate(issued.ssh_cert))],
            known_hosts=asyncssh.import_known_hosts(hub.auth.host_ca.known_hosts_line("*")),
            agent_path=None,
            connect_timeout=20,
        )
    assert device.logins == []  # the device was never asked
    failed = await _events(hub, "auth.failed")
    assert "for login 'pi', not 'root'" in failed[0].fields["reason"]


@pytest.mark.parametrize(
    "options",
    [
        {"kex_algs": ["ecdh-sha2-nistp256"]},
        {"kex_algs": ["diffie-hellman-group14-sha256"]},
        {"encryption_algs": ["aes128-ctr"]},
        {"server_host_key_algs": ["ssh-rsa"]},
    ],
)
async def test_the_proxy_refuses_a_user_forcing_a_weak_algorithm(
    proxied: tuple[Hub, Device], options: dict[str, Any]
) -> None:
    hub, device = proxied
    key, cert, tls = await _user(hub)
    with pytest.raises((asyncssh.KeyExchangeFailed, asyncssh.ConnectionLost)):
        await _ssh(hub, key, cert, tls, **options)
    assert device.logins == []


@pytest.mark.parametrize(
    "options",
    [{"kex_algs": ["ecdh-sha2-nistp256"]}, {"encryption_algs": ["aes128-ctr", "aes128-cbc"]}],
)
async def test_the_proxy_does_not_reach_a_device_that_offers_only_weak_algorithms(
    proxied: tuple[Hub, Device], options: dict[str, Any]
) -> None:
    hub, device = proxied
    device.options = options
    key, cert, tls = await _user(hub)
    async with await _ssh(hub, key, cert, tls) as conn:
        result = await conn.run("env", encoding=None)
    assert result.exit_status == 255, result
    assert result.stderr.startswith(
        b"remoteler: node 'dev1' offers no modern SSH algorithm (curve25519, AES-GCM"
    ), result.stderr
    assert device.logins == []
