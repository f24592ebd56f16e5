"""The serial console's SSH-level protocol, shared by the device and ``tsh console``.

A console is an SSH session channel whose subsystem is :data:`CONSOLE_SUBSYSTEM`
(RFC 4254 §6.5), so the user's certificate and its signed permissions decide at
the device, end to end, as for a shell. The port, baud rate and mode travel as
``env`` requests (RFC 4254 §6.4) before the subsystem starts; OpenSSH can do the
same with ``ssh -o SetEnv=REMOTELER_SERIAL_PORT=... -s node remoteler-serial``.

A break is the SSH ``break`` request (RFC 4335). A baud change mid-session is a
second session channel on the same connection with :data:`CONTROL_SUBSYSTEM`
and :data:`ENV_BAUD`: the device applies it to the port this connection holds
for writing and answers with an exit status (0 done, 1 refused, reason on stderr).
"""

from __future__ import annotations

from enum import StrEnum

CONSOLE_SUBSYSTEM = "remoteler-serial"
CONTROL_SUBSYSTEM = "remoteler-serial-ctl"
ENV_PORT = "REMOTELER_SERIAL_PORT"
ENV_BAUD = "REMOTELER_SERIAL_BAUD"
ENV_MODE = "REMOTELER_SERIAL_MODE"

DEFAULT_BAUD = 115200
#: The POSIX termios rates pyserial can set on Linux (``serial.Serial.BAUDRATES``
#: plus the high ones Linux names); anything else is refused before the port is touched.
BAUD_RATES = (
    50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400,
    57600, 115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000, 1500000,
    2000000, 2500000, 3000000, 3500000, 4000000,
)  # fmt: skip
#: RFC 4335 lets the server pick a length for a break of 0 ms; longer asks are capped.
DEFAULT_BREAK_MS = 250
MAX_BREAK_MS = 3000


class Mode(StrEnum):
    """How a console holds its port: one writer at a time, any number of viewers."""

    READ_WRITE = "rw"
    READ_ONLY = "read-only"


def parse_baud(text: str) -> int:
    """The baud rate in ``text``; ValueError (a message for the user) if not a known rate."""
    try:
        baud = int(text.strip())
    except ValueError:
        raise ValueError(f"baud rate {text.strip()[:20]!r} is not a number, e.g. 115200") from None
    if baud not in BAUD_RATES:
        raise ValueError(f"baud rate {baud} is not supported; use one of 9600, 19200, ... 4000000")
    return baud


def parse_mode(text: str) -> Mode:
    try:
        return Mode(text)
    except ValueError:
        raise ValueError(f"console mode {text[:20]!r} is not 'rw' or 'read-only'") from None


def break_length(msec: int) -> float:
    """Seconds of break condition for an RFC 4335 request of ``msec`` milliseconds."""
    if msec <= 0:
        msec = DEFAULT_BREAK_MS
    return min(msec, MAX_BREAK_MS) / 1000
