"""Which serial ports a console may open and who holds them (sans-I/O, no port touched)."""

from __future__ import annotations

import pytest

from edge_agent.serial_ports import ConsoleRefused, ConsoleRequest, Holder, PortTable
from remoteler.console import ENV_BAUD, ENV_MODE, ENV_PORT, Mode, break_length, parse_baud


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
