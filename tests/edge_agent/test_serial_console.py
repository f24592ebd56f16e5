"""The device's serial ports against a real pseudo-terminal pair standing in for the hardware.

The pty's slave side is the "serial port" the agent opens with pyserial; the
test holds the master side, as the device on the other end of the cable would.
A pty has no line to hold in break (Linux's pty driver has no ``break_ctl``), so
a break is checked to be accepted, not seen; docs/serial-console.md says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import termios
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from edge_agent.serial_line import SerialConsoles, SerialLine
from edge_agent.serial_ports import ConsoleRefused, ConsoleRequest, Holder, PortTable
from remoteler.console import ENV_BAUD, ENV_MODE, ENV_PORT, Mode, break_length, parse_baud


@dataclass
class Pty:
    master: int
    slave: int
    path: str


@pytest.fixture
def pty_pair() -> Iterator[Pty]:
    master, slave = os.openpty()
    os.set_blocking(master, False)
    try:
        yield Pty(master, slave, os.ttyname(slave))
    finally:
        for fd in (master, slave):
            with contextlib.suppress(OSError):  # the test may have closed it
                os.close(fd)


async def _read_master(fd: int, want: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < want:
        ready = loop.create_future()
        loop.add_reader(fd, ready.set_result, None)
        try:
            await asyncio.wait_for(ready, 5)
        finally:
            loop.remove_reader(fd)
        got += os.read(fd, 4096)
    return bytes(got)


def _speed(fd: int) -> tuple[int, int]:
    attrs = termios.tcgetattr(fd)
    return attrs[4], attrs[5]  # ispeed, ospeed


# -- the claim rules (sans-I/O) ----------------------------------------------------


def test_ports_must_be_absolute_and_are_deduplicated() -> None:
    assert PortTable(["/dev/ttyUSB0", "/dev/../dev/ttyUSB0"]).ports == ["/dev/ttyUSB0"]
    with pytest.raises(ValueError, match="absolute path"):
        PortTable(["ttyUSB0"])


def test_resolve_by_path_or_basename_only_among_the_operators_ports() -> None:
    table = PortTable(["/dev/ttyUSB0", "/dev/ttyS1"])
    assert table.resolve("/dev/ttyS1") == "/dev/ttyS1"
    assert table.resolve("ttyUSB0") == "/dev/ttyUSB0"
    with pytest.raises(ConsoleRefused, match="not offered by this device"):
        table.resolve("/dev/sda")
    with pytest.raises(ConsoleRefused, match="several serial ports; pick one with --port"):
        table.resolve("")
    assert PortTable(["/dev/ttyS1"]).resolve("") == "/dev/ttyS1"
    with pytest.raises(ConsoleRefused, match="no serial console ports"):
        PortTable().resolve("/dev/ttyS1")


def test_parse_request_checks_baud_and_mode() -> None:
    table = PortTable(["/dev/ttyS1"])
    assert table.parse_request({}) == ConsoleRequest("/dev/ttyS1", 115200, Mode.READ_WRITE)
    got = table.parse_request({ENV_PORT: "ttyS1", ENV_BAUD: "9600", ENV_MODE: "read-only"})
    assert got == ConsoleRequest("/dev/ttyS1", 9600, Mode.READ_ONLY)
    with pytest.raises(ConsoleRefused, match="baud rate 12345 is not supported"):
        table.parse_request({ENV_BAUD: "12345"})
    with pytest.raises(ConsoleRefused, match="not a number"):
        table.parse_request({ENV_BAUD: "fast"})
    with pytest.raises(ConsoleRefused, match="not 'rw' or 'read-only'"):
        table.parse_request({ENV_MODE: "admin"})


def test_one_writer_any_viewers() -> None:
    table = PortTable(["/dev/ttyS1"])
    alice, bob, carol = Holder("alice", "pi", "s1"), Holder("bob", "pi", "s2"), Holder("c", "", "")
    table.claim("/dev/ttyS1", Mode.READ_WRITE, alice)
    with pytest.raises(ConsoleRefused, match=r"in use by alice \(login pi, since .*--read-only"):
        table.claim("/dev/ttyS1", Mode.READ_WRITE, bob)
    table.claim("/dev/ttyS1", Mode.READ_ONLY, bob)
    table.claim("/dev/ttyS1", Mode.READ_ONLY, carol)
    assert table.holders("/dev/ttyS1") == 3
    table.release("/dev/ttyS1", alice)
    assert table.writer("/dev/ttyS1") is None
    table.claim("/dev/ttyS1", Mode.READ_WRITE, carol)  # a viewer may also take the writer's seat
    assert table.writer("/dev/ttyS1") is carol
    assert table.holders("/dev/ttyS1") == 3


def test_baud_and_break_helpers() -> None:
    assert parse_baud(" 9600 ") == 9600
    assert break_length(0) == 0.25 and break_length(100) == 0.1 and break_length(60000) == 3.0


# -- the line on a real pty ------------------------------------------------------


async def test_bytes_both_ways_baud_change_and_break(pty_pair: Pty) -> None:
    line = SerialLine(pty_pair.path, 115200)
    got: asyncio.Queue[bytes] = asyncio.Queue()
    line.subscribe("me", got.put_nowait, lambda reason: None)
    try:
        assert _speed(pty_pair.slave) == (termios.B115200, termios.B115200)
        os.write(pty_pair.master, b"login: \x00\xff")  # raw: binary passes untouched
        data = b""
        while len(data) < 9:
            data += await asyncio.wait_for(got.get(), 5)
        assert data == b"login: \x00\xff"

        assert line.write(b"root\r\x03", lambda: None)
        assert await _read_master(pty_pair.master, 6) == b"root\r\x03"

        line.set_baud(9600)
        assert line.baud == 9600
        assert _speed(pty_pair.slave) == (termios.B9600, termios.B9600)
        line.send_break(0.01)  # accepted; a pty shows nothing (module docstring)
        await asyncio.sleep(0.02)
    finally:
        line.close()


async def test_port_going_away_tells_every_subscriber(pty_pair: Pty) -> None:
    line = SerialLine(pty_pair.path, 115200)
    reasons: asyncio.Queue[str] = asyncio.Queue()
    line.subscribe("a", lambda d: None, reasons.put_nowait)
    line.subscribe("b", lambda d: None, reasons.put_nowait)
    os.close(pty_pair.master)  # the "cable" is gone
    first = await asyncio.wait_for(reasons.get(), 5)
    assert first.startswith(f"serial port {pty_pair.path}: the port went away")
    assert await asyncio.wait_for(reasons.get(), 5) == first
    assert line.closed


async def test_consoles_share_one_line_and_close_it_with_the_last_holder(pty_pair: Pty) -> None:
    consoles = SerialConsoles([pty_pair.path])
    writer, viewer = Holder("alice", "pi", "s1"), Holder("bob", "pi", "s2")
    seen = consoles.open(ConsoleRequest(pty_pair.path, 19200, Mode.READ_ONLY), viewer)
    assert seen.baud == 19200  # the first holder opens the port at its rate
    line = consoles.open(ConsoleRequest(pty_pair.path, 9600, Mode.READ_WRITE), writer)
    assert line is seen and line.baud == 9600  # the writer sets the rate
    assert _speed(pty_pair.slave)[1] == termios.B9600
    late = Holder("carol", "pi", "s3")
    consoles.open(ConsoleRequest(pty_pair.path, 300, Mode.READ_ONLY), late)
    assert line.baud == 9600  # a viewer takes the rate the line is at
    with pytest.raises(ConsoleRefused, match="in use by alice"):
        consoles.open(ConsoleRequest(pty_pair.path, 9600, Mode.READ_WRITE), Holder("d", "pi", ""))
    for holder in (writer, viewer):
        consoles.release(pty_pair.path, holder)
        assert not line.closed
    consoles.release(pty_pair.path, late)
    assert line.closed
    again = consoles.open(ConsoleRequest(pty_pair.path, 9600, Mode.READ_WRITE), writer)
    assert again is not line and not again.closed
    consoles.release(pty_pair.path, writer)


async def test_a_port_that_cannot_open_is_refused_and_not_held(tmp_path: object) -> None:
    missing = "/dev/remoteler-test-no-such-tty"
    consoles = SerialConsoles([missing])
    holder = Holder("alice", "pi", "s1")
    with pytest.raises(ConsoleRefused, match=f"could not open serial port {missing}: No such file"):
        consoles.open(ConsoleRequest(missing, 9600, Mode.READ_WRITE), holder)
    assert consoles.table.holders(missing) == 0  # the claim was given back


async def test_a_port_another_program_holds_is_refused(pty_pair: Pty) -> None:
    import serial

    other = serial.Serial(pty_pair.path, exclusive=True)
    try:
        consoles = SerialConsoles([pty_pair.path])
        with pytest.raises(ConsoleRefused, match="another program on the device holds it"):
            consoles.open(ConsoleRequest(pty_pair.path, 9600, Mode.READ_WRITE), Holder("a", "", ""))
    finally:
        other.close()
