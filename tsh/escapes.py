"""``tsh console`` escape sequences (sans-I/O), after OpenSSH's ``~.`` and cu's ``~``.

An escape is recognised only right after a newline (CR or LF) or at the very
start, so a ``~`` inside a line reaches the device untouched:

- ``~.`` quit (close the console; the device's port stays as it is)
- ``~B`` send a break (RFC 4335 ``break`` request)
- ``~b RATE<Enter>`` change the baud rate, e.g. ``~b9600`` then Enter
- ``~?`` list the escapes
- ``~~`` send one ``~``

Any other character after ``~`` is sent with the ``~`` before it, as ssh does.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

ESCAPE = ord("~")
NEWLINES = b"\r\n"
ERASE = b"\x08\x7f"
MAX_RATE_TEXT = 16
HELP = (
    "Supported escapes (after a newline):\r\n"
    "  ~.  quit\r\n"
    "  ~B  send a break\r\n"
    "  ~b RATE<Enter>  set the baud rate, e.g. ~b9600\r\n"
    "  ~?  this list\r\n"
    "  ~~  send a ~\r\n"
)


@dataclass(frozen=True)
class Send:
    """Bytes for the device."""

    data: bytes


@dataclass(frozen=True)
class Quit:
    """``~.``: close the console."""


@dataclass(frozen=True)
class Break:
    """``~B``: send a break."""


@dataclass(frozen=True)
class SetBaud:
    """``~b RATE``: the text typed (the caller checks it is a rate)."""

    rate: str


@dataclass(frozen=True)
class Help:
    """``~?``: show :data:`HELP`."""


Action = Send | Quit | Break | SetBaud | Help


class _State(Enum):
    LINE_START = auto()
    MIDLINE = auto()
    ESCAPE = auto()  # "~" seen at a line start
    RATE = auto()  # "~b" seen: reading a rate until Enter


class EscapeParser:
    """Feed keyboard bytes in, take actions out; never raises on any input."""

    def __init__(self) -> None:
        self._state = _State.LINE_START
        self._rate = bytearray()
        self._actions: list[Action] = []
        self._send = bytearray()

    def feed(self, data: bytes) -> list[Action]:
        for byte in data:
            self._byte(byte)
        self._flush_send()
        actions, self._actions = self._actions, []
        return actions

    def _flush_send(self) -> None:
        if self._send:
            self._actions.append(Send(bytes(self._send)))
            self._send.clear()

    def _emit(self, action: Action) -> None:
        self._flush_send()
        self._actions.append(action)

    def _byte(self, byte: int) -> None:
        state = self._state
        if state is _State.RATE:
            if byte in NEWLINES:
                self._emit(SetBaud(self._rate.decode("ascii", "replace").strip()))
                self._rate.clear()
                self._state = _State.LINE_START
            elif byte in ERASE:
                del self._rate[-1:]
            elif 0x20 <= byte < 0x7F and len(self._rate) < MAX_RATE_TEXT:
                self._rate.append(byte)
            elif byte < 0x20:  # Ctrl-C, Esc...: give up on the rate
                self._rate.clear()
                self._state = _State.LINE_START
            return
        if state is _State.ESCAPE:
            self._state = _State.MIDLINE
            if byte == ord("."):
                self._emit(Quit())
            elif byte == ord("B"):
                self._emit(Break())
                self._state = _State.LINE_START
            elif byte == ord("b"):
                self._state = _State.RATE
            elif byte == ord("?"):
                self._emit(Help())
                self._state = _State.LINE_START
            elif byte == ESCAPE:
                self._send.append(ESCAPE)
            else:
                self._send += bytes((ESCAPE, byte))
                if byte in NEWLINES:
                    self._state = _State.LINE_START
            return
        if state is _State.LINE_START and byte == ESCAPE:
            self._state = _State.ESCAPE
            return
        self._send.append(byte)
        self._state = _State.LINE_START if byte in NEWLINES else _State.MIDLINE
