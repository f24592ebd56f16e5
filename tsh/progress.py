"""A one-line progress bar per file for ``tsh scp``, as OpenSSH's ``scp`` draws it.

:class:`ProgressLine` is the pure part: bytes and the time go in, the text to
draw comes out (at most every :data:`INTERVAL` seconds, and once at the end).
:class:`TerminalProgress` is the adapter that writes those lines to a terminal
fd; ``tsh scp`` uses it only when stderr is a terminal. Hand-written rather
than a dependency: ``tsh`` start-up time matters (docs/performance.md) and this
is all we need.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from remoteler.text import printable

#: Redraw at most this often (seconds), as OpenSSH's ``scp`` (once a second) but livelier.
INTERVAL = 0.1

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_bytes(n: float) -> str:
    """``1536`` -> ``1.5KiB``; whole bytes below 1 KiB."""
    unit = 0
    while n >= 1024 and unit < len(_UNITS) - 1:
        n /= 1024
        unit += 1
    if unit == 0:
        return f"{int(n)}B"
    return f"{n:.1f}{_UNITS[unit]}"


def clock(seconds: float) -> str:
    """``mm:ss`` (``hh:mm:ss`` from an hour on); ``--:--`` when unknown."""
    if seconds != seconds or seconds < 0 or seconds > 99 * 3600:  # NaN, negative, absurd
        return "--:--"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60:02d}:{s % 60:02d}"


class ProgressLine:
    """One file's progress: name, percent, bytes, rate and ETA in ``width`` columns."""

    def __init__(self, name: str, total: int, width: int, now: float) -> None:
        # The name may be the node's (a -r download): never a control character to the terminal.
        self.name = printable(name, limit=len(name))
        self.total = total
        self.width = max(width, 20)
        self.started = now
        self.done = 0
        self._drawn_at: float | None = None
        self.finished = False

    def update(self, done: int, now: float) -> str | None:
        """Record ``done`` bytes; return the line to draw if one is due, else None."""
        self.done = done
        if done >= self.total:
            return self.finish(now)
        if self._drawn_at is not None and now - self._drawn_at < INTERVAL:
            return None
        self._drawn_at = now
        return self.render(now)

    def finish(self, now: float) -> str | None:
        """The last line (elapsed time instead of the ETA), once; None if already drawn."""
        if self.finished:
            return None
        self.finished = True
        return self.render(now) + "\n"

    def render(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-6)
        # The clock starts at the first block, so a rate over a shorter span is noise.
        rate = self.done / elapsed if elapsed >= INTERVAL or self.finished else 0.0
        pct = 100 if self.total <= 0 else min(100, self.done * 100 // self.total)
        if self.finished:
            when = f"{clock(elapsed)}    "
        elif rate > 0:
            when = f"{clock((self.total - self.done) / rate)} ETA"
        else:
            when = "--:-- ETA"
        speed = f"{human_bytes(rate)}/s" if rate > 0 else "--/s"
        stats = f" {pct:3d}% {human_bytes(self.done):>9} {speed:>11} {when}"
        room = self.width - 1 - len(stats)  # the last column stays free: no wrap
        name = self.name
        if room < 1:
            return f"\r{stats[: self.width - 1]}"
        if len(name) > room:
            name = "..." + name[-(room - 3) :] if room > 3 else name[:room]
        return f"\r{name.ljust(room)}{stats}"


class TerminalProgress:
    """An asyncssh SFTP ``progress_handler`` drawing one line per file on ``fd``."""

    def __init__(self, fd: int, now: Callable[[], float] = time.monotonic) -> None:
        self.fd = fd
        self.now = now
        self.line: ProgressLine | None = None
        self._key: tuple[bytes, bytes] | None = None

    def _width(self) -> int:
        try:
            return os.get_terminal_size(self.fd).columns or 80
        except OSError:
            return 80

    def __call__(self, src: bytes, dst: bytes, done: int, total: int) -> None:
        if self._key != (src, dst) or self.line is None or self.line.finished:
            self.close()
            name = os.path.basename(src.rstrip(b"/")).decode("utf-8", "replace")
            self.line = ProgressLine(name, total, self._width(), self.now())
            self._key = (src, dst)
        self._write(self.line.update(done, self.now()))

    def close(self) -> None:
        """End the current line (a transfer cut short keeps its last figures)."""
        if self.line is not None and not self.line.finished:
            self._write(self.line.finish(self.now()))

    def _write(self, text: str | None) -> None:
        if not text:
            return
        data = text.encode("utf-8", "replace")
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except BlockingIOError:
            pass  # a stalled terminal loses a redraw, not the transfer
