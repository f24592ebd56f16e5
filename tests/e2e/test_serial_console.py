"""``tsh console`` end to end: real hub, real agent, real tsh, a pty pair as the serial port.

The agent is offered the pty's slave side (``--serial-port``); the test holds the
master side, as the device on the far end of the cable would: what the test
writes there must come out of tsh's stdout, what it types into tsh's stdin must
arrive there. The baud rate is read back from the slave's termios. A pty cannot
show a break (Linux's pty driver has no ``break_ctl``), so the break is checked
by what can be seen: tsh's note and the ``breaks`` count in ``serial.close``.
The read-only viewer's stdin is a pty too, to see tsh make a terminal raw and
restore it; plain OpenSSH (through ``tsh config``) opens the console by name.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import select
import shutil
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from helpers import BIN, SERIAL_ROLE, Cluster, stop_process, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name
OPENSSH = shutil.which("ssh") is not None  # else the OpenSSH case is left out

BOOT = b"U-Boot 2024.01\r\n=> \x00\xfe"
ENV = b"bootcmd=run distro\r\n"
DEVICE_OUTPUT = BOOT + ENV


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, int, str]]:
    master, slave = os.openpty()
    try:
        yield master, slave, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def _read_until(fd: int, marker: bytes, timeout: float = 20.0) -> bytes:
    """Bytes from ``fd`` (a pipe or the pty master) until ``marker`` has been seen."""
    got = b""
    deadline = time.monotonic() + timeout
    while marker not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {marker!r} within {timeout}s; got {got[-300:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"end of file before {marker!r}; got {got[-300:]!r}")
            got += chunk
    return got


class Console:
    """One ``tsh console`` process; stderr goes to a file the test reads.

    Its stdin is a pipe, or with ``tty`` a pseudo-terminal the test types into
    (as a user's terminal: tsh must make it raw and restore it).
    """

    def __init__(self, cluster: Cluster, err: Path, *args: str, tty: bool = False) -> None:
        self.err = err
        self.tty = os.openpty() if tty else None
        #: the terminal's settings before tsh runs
        self.cooked = termios.tcgetattr(self.tty[1]) if self.tty else None
        with open(err, "wb") as stderr:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                [str(BIN / "tsh"), "console", *args],
                stdin=self.tty[1] if self.tty else subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=cluster.env(),
            )

    def type(self, data: bytes) -> None:
        if self.tty is not None:
            os.write(self.tty[0], data)
            return
        stdin: IO[bytes] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(data)
        stdin.flush()

    def read_until(self, marker: bytes) -> bytes:
        assert self.proc.stdout is not None
        return _read_until(self.proc.stdout.fileno(), marker)

    def stderr_shows(self, text: str) -> str:
        return str(
            wait_for(lambda: text in self.err.read_text() and self.err.read_text(), what=text)
        )

    def quit(self) -> int:
        """``~.``: the caller's last input ended a line (an escape needs a line start)."""
        self.type(b"~.")
        return self.proc.wait(timeout=20)

    def stop(self) -> None:
        stop_process(self.proc)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        for fd in self.tty or ():
            with contextlib.suppress(OSError):
                os.close(fd)


def _openssh_console(cluster: Cluster, tmp_path: Path, master: int, slave: int, port: str) -> None:
    config = tmp_path / "ssh_config"
    config.write_text(cluster.tsh("config").stdout)
    name = json.loads(cluster.tsh("status", "--format", "json").stdout)["cluster"]
    env = f"SetEnv=REMOTELER_SERIAL_PORT={os.path.basename(port)} REMOTELER_SERIAL_BAUD=57600"
    argv = ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", env, "-e", "none", "-T"]
    err = tmp_path / "openssh.err"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [*argv, "-s", f"{ME}@dev1.{name}", "remoteler-serial"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=cluster.env(),
        )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        wait_for(lambda: "at 57600 baud, read-write" in err.read_text(), what="ssh console open")
        assert termios.tcgetattr(slave)[5] == termios.B57600
        os.write(master, b"from the device\r\n")
        _read_until(proc.stdout.fileno(), b"from the device\r\n")
        proc.stdin.write(b"from openssh\r")
        proc.stdin.flush()
        assert _read_until(master, b"from openssh\r") == b"from openssh\r"
    finally:
        stop_process(proc)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                pipe.close()


def _events(cluster: Cluster, type: str, want: Any, count: int = 1) -> list[Any]:
    def ready() -> list[Any] | None:
        found = [e for e in cluster.tctl_json("audit", "search", "--type", type) if want(e)]
        return found if len(found) >= count else None

    return list(wait_for(ready, timeout=20, what=f"{type} at the hub"))


def test_console_through_the_hub_both_ways_baud_break_sharing_and_refusal(
    cluster: Cluster, pty_pair: tuple[int, int, str], tmp_path: Path
) -> None:
    master, slave, port = pty_pair
    role = tmp_path / "serial.toml"
    role.write_text(SERIAL_ROLE)
    cluster.tctl("create", "-f", str(role))
    cluster.add_user("alice", [ME], roles="access,serial")
    cluster.add_user("bob", [ME])  # 'access' only: serial_console is off by default
    cluster.start_agent("dev1", "env=lab", None, "--serial-port", port, "--heartbeat-interval", "1")
    wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
    assert cluster.login("alice").returncode == 0

    # The port is listed (from the agent's heartbeat).
    listed = wait_for(
        lambda: port in (out := cluster.tsh("ls", "-v").stdout) and out, what="port in tsh ls -v"
    )
    assert "Serial ports" in listed

    consoles: list[Console] = []
    try:
        writer = Console(cluster, tmp_path / "writer.err", f"{ME}@dev1")
        consoles.append(writer)
        writer.stderr_shows(f"remoteler: {port} at 115200 baud, read-write")
        assert termios.tcgetattr(slave)[5] == termios.B115200

        # Bytes both ways, binary included (the port is raw).
        os.write(master, BOOT)
        assert writer.read_until(b"=> \x00\xfe") == BOOT
        writer.type(b"printenv ~x\r")  # a ~ mid-line is sent as it is
        assert _read_until(master, b"printenv ~x\r") == b"printenv ~x\r"

        # A viewer shares the port; a second writer is refused, naming the holder.
        viewer = Console(cluster, tmp_path / "viewer.err", "--read-only", f"{ME}@dev1", tty=True)
        consoles.append(viewer)
        assert viewer.tty is not None and viewer.cooked is not None
        assert viewer.cooked[3] & termios.ICANON and viewer.cooked[3] & termios.ECHO
        viewer.stderr_shows(f"remoteler: {port} at 115200 baud, read-only")
        assert "[tsh: ~. to quit, ~? for help]" in viewer.err.read_text()
        raw = termios.tcgetattr(viewer.tty[1])
        assert not raw[3] & (termios.ICANON | termios.ECHO | termios.ISIG)  # keys go as typed
        second = cluster.tsh("console", f"{ME}@dev1")
        assert second.returncode == 1
        assert f"serial port {port} is in use by alice (login {ME}" in second.stderr
        assert "watch with --read-only" in second.stderr
        os.write(master, ENV)
        assert writer.read_until(ENV) == ENV
        assert viewer.read_until(ENV) == ENV
        viewer.type(b"ignored\r")  # tsh sends nothing for a viewer
        writer.type(b"after\r")
        assert _read_until(master, b"after\r") == b"after\r"

        # Baud change and break, by escapes after a newline.
        writer.type(b"~b9600\r")
        writer.stderr_shows("[tsh: baud rate now 9600]")
        assert termios.tcgetattr(slave)[4:6] == [termios.B9600, termios.B9600]
        writer.type(b"~b1234\r")
        writer.stderr_shows("baud rate 1234 is not supported")
        writer.type(b"~B")
        writer.stderr_shows("[tsh: break sent]")

        assert viewer.quit() == 0
        assert termios.tcgetattr(viewer.tty[1]) == viewer.cooked  # the terminal, as it was
        assert writer.quit() == 0
    finally:
        for console in consoles:
            console.stop()

    if OPENSSH:  # plain OpenSSH through 'tsh config': env requests and the subsystem by name
        _openssh_console(cluster, tmp_path, master, slave, port)

    # Without the permission: one line from the device, a non-zero exit.
    bob_id = tmp_path / "bob.id"
    cluster.tctl("auth", "sign", "--user", "bob", "--ttl", "10m", "-o", str(bob_id))
    refused = cluster.tsh("-i", str(bob_id), "--proxy", cluster.addr, "console", f"{ME}@dev1")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "remoteler: the serial console is not permitted by your roles (permission serial_console)"
    ]

    # Audited at the hub: opens (allowed or refused with the reason) and closes.
    opens = _events(cluster, "serial.open", lambda e: True, count=4)
    allowed = [e for e in opens if e["fields"]["allowed"]]
    assert sorted(e["fields"]["mode"] for e in allowed) == ["read-only", "rw"] + ["rw"] * OPENSSH
    assert all(e["user"] == "alice" and e["fields"]["port"] == port for e in allowed)
    denied = {e["user"]: e["fields"]["reason"] for e in opens if not e["fields"]["allowed"]}
    assert "in use by alice" in denied["alice"]
    assert "permission serial_console" in denied["bob"]
    rw_open = next(
        e for e in allowed if (e["fields"]["mode"], e["fields"]["baud"]) == ("rw", 115200)
    )
    close = _events(cluster, "serial.close", lambda e: e["session"] == rw_open["session"])[0]
    assert close["fields"]["baud"] == 9600 and close["fields"]["breaks"] == 1
    assert close["fields"]["bytes_in"] == len(b"printenv ~x\rafter\r")
    assert close["fields"]["bytes_out"] == len(DEVICE_OUTPUT)

    if OPENSSH:
        ssh_open = next(e for e in allowed if e["fields"]["baud"] == 57600)
        ssh_close = _events(cluster, "serial.close", lambda e: e["session"] == ssh_open["session"])
        assert ssh_close[0]["fields"]["bytes_in"] == len(b"from openssh\r")

    # Recorded like a shell session: tsh play replays the console's output.
    played = cluster.tsh("play", rw_open["session"], "--format", "json")
    assert played.returncode == 0, played.stderr
    frames = json.loads(played.stdout)
    assert b"".join(base64.b64decode(f["data_b64"]) for f in frames) == DEVICE_OUTPUT


def test_a_serial_port_is_listed_as_soon_as_the_agent_connects(
    cluster: Cluster, pty_pair: tuple[int, int, str]
) -> None:
    # A heartbeat every 300 s: none is due while this test runs, so the port can
    # only come from what the agent sends at connect.
    _master, _slave, port = pty_pair
    cluster.start_agent("dev2", "", None, "--serial-port", port, "--heartbeat-interval", "300")
    cluster.add_user("alice", [ME])  # while the agent joins
    assert cluster.login("alice").returncode == 0
    log = cluster.root / "agent-dev2.log"
    wait_for(lambda: "tunnel up" in log.read_text(), what="dev2's tunnel up")
    listed = wait_for(
        lambda: port in (out := cluster.tsh("ls", "-v").stdout) and out,
        timeout=60,  # generous on a loaded machine; the next heartbeat is 300 s away
        what="the port in tsh ls -v within 60 s of connecting",
    )
    assert "Serial ports" in listed
