"""The scp progress bar: the pure line with a fake clock, then drawn on a real pty."""

from __future__ import annotations

import fcntl
import os
import struct
import termios
from collections.abc import Iterator

import pytest

from tsh.progress import INTERVAL, ProgressLine, TerminalProgress, clock, human_bytes

MiB = 1 << 20


@pytest.mark.parametrize(
    ("n", "want"),
    [(0, "0B"), (1023, "1023B"), (1536, "1.5KiB"), (50 * MiB, "50.0MiB"), (3 << 40, "3.0TiB")],
)
def test_human_bytes(n: int, want: str) -> None:
    assert human_bytes(n) == want


@pytest.mark.parametrize(
    ("s", "want"), [(0, "00:00"), (65.9, "01:05"), (3725, "01:02:05"), (-1, "--:--")]
)
def test_clock(s: float, want: str) -> None:
    assert clock(s) == want
    assert clock(float("nan")) == "--:--"


def test_line_fields_rate_and_eta() -> None:
    line = ProgressLine("data.bin", 100 * MiB, 80, now=0.0)
    first = line.update(1 * MiB, now=0.01)
    assert first is not None and "--/s" in first and "--:-- ETA" in first  # too early for a rate
    text = line.update(25 * MiB, now=5.0)
    assert text is not None
    assert text.startswith("\rdata.bin ")
    assert " 25% " in text and "25.0MiB" in text and "5.0MiB/s" in text
    assert text.endswith("00:15 ETA")  # 75 MiB left at 5 MiB/s
    assert len(text) == 80  # "\r" + 79 columns: the last column stays free


def test_at_most_ten_redraws_a_second_and_one_final_line() -> None:
    line = ProgressLine("f", 1000, 60, now=0.0)
    drawn = [line.update(i, now=i / 1000) for i in range(1, 1000)]  # 999 calls in ~1 s
    assert 9 <= sum(d is not None for d in drawn) <= 11
    last = line.update(1000, now=1.0)
    assert last is not None and last.endswith("\n") and " 100% " in last
    assert "00:01" in last and "ETA" not in last
    assert line.update(1000, now=1.1) is None and line.finish(1.2) is None


def test_long_names_are_cut_from_the_left_and_empty_files_are_100() -> None:
    line = ProgressLine("x" * 100 + "-end.log", 10, 60, now=0.0)
    text = line.render(now=1.0)
    assert len(text) == 60 and text.startswith("\r...") and "-end.log" in text
    empty = ProgressLine("empty", 0, 60, now=0.0).update(0, now=0.0)
    assert empty is not None and " 100% " in empty and empty.endswith("\n")


def test_a_node_chosen_name_reaches_the_terminal_as_printable_only() -> None:
    evil = "\x1b]52;c;ZXZpbA==\x07\x1b[2Jlog\u202etxt.exe"
    for text in (ProgressLine(evil, 10, 80, now=0.0).render(now=1.0), _drawn(evil)):
        assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
        assert "?]52;c;ZXZpbA==??[2Jlog?txt.exe" in text


def _drawn(name: str) -> str:
    master, slave = os.openpty()
    try:
        bar = TerminalProgress(slave, now=lambda: 0.0)
        bar(b"/remote/" + name.encode(), b"local", 5, 10)
        bar.close()
        return _read_all(master)
    finally:
        os.close(master)
        os.close(slave)


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 72, 0, 0))
    try:
        yield master, slave
    finally:
        os.close(master)
        os.close(slave)


def _read_all(fd: int) -> str:
    os.set_blocking(fd, False)
    out = b""
    try:
        while chunk := os.read(fd, 4096):
            out += chunk
    except BlockingIOError:
        pass
    return out.decode()


def test_terminal_progress_on_a_real_pty(pty: tuple[int, int]) -> None:
    master, slave = pty
    t = [0.0]
    bar = TerminalProgress(slave, now=lambda: t[0])
    for done in range(0, 4 * MiB + 1, 256 * 1024):
        bar(b"/remote/dir/firmware.img", b"firmware.img", done, 4 * MiB)
        t[0] += INTERVAL / 2  # twice as many calls as redraws
    bar(b"/remote/dir/notes.txt", b"notes.txt", 10, 10)
    text = _read_all(master)
    lines = text.split("\r\n")  # the pty's onlcr turns our "\n" into "\r\n"
    assert lines[-1] == ""
    firmware = [d for d in lines[0].split("\r") if d]
    assert 8 <= len(firmware) <= 10, firmware  # 17 calls, half of them too soon to redraw
    assert all(d.startswith("firmware.img ") and len(d) == 71 for d in firmware)  # 72 cols - 1
    assert " 100% " in firmware[-1] and "4.0MiB" in firmware[-1]
    notes = lines[1].strip("\r")
    assert notes.startswith("notes.txt ") and " 100% " in notes and "10B" in notes


def test_a_transfer_cut_short_ends_its_line(pty: tuple[int, int]) -> None:
    master, slave = pty
    t = [0.0]
    bar = TerminalProgress(slave, now=lambda: t[0])
    bar(b"big", b"big", 1 * MiB, 4 * MiB)
    t[0] = 2.0
    bar.close()
    bar.close()  # idempotent
    text = _read_all(master)
    assert text.endswith("\r\n") and text.count("\r\n") == 1
    assert " 25% " in text.rsplit("\r", 2)[-2]
