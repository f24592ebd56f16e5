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
from edge_agent.serial_ports import ConsoleRefused, ConsoleRequest, Holder
from remoteler.console import Mode


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
        ended = asyncio.Event()
        end_break = line._end_break

        def _end_break() -> None:
            end_break()
            ended.set()

        line._end_break = _end_break  # type: ignore[method-assign]
        line.send_break(0.01)  # accepted; a pty shows nothing (module docstring)
        assert line._serial.break_condition is True and line._break_end is not None
        await asyncio.wait_for(ended.wait(), 5)
        assert line._break_end is None and line._serial.break_condition is False
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


async def test_output_before_the_first_subscriber_is_kept_for_it(pty_pair: Pty) -> None:
    """The console subscribes only once serial.open is durable: the device may speak first."""
    line = SerialLine(pty_pair.path, 115200)
    try:
        os.write(pty_pair.master, b"early boot banner\r\n")
        for _ in range(500):  # until the loop has read it (nobody to hand it to yet)
            if line._backlog:
                break
            await asyncio.sleep(0.01)
        got: list[bytes] = []
        line.subscribe("late", got.append, lambda reason: None)
        assert got == [b"early boot banner\r\n"]
    finally:
        line.close()
