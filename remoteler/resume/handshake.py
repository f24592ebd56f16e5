"""The handshake frames of a resumable session, checked (docs/resume.md).

* HELLO (device -> client, first bytes of a new session): ``{v, id, token, grace,
  buffer}``. A client that asked for resumption and reads anything else first is
  talking to a device (or hub) without it, and carries on with plain SSH.
* RESUME (client -> device, first bytes on a new link): ``{id, token, received}``.
* RESUMED (device -> client): ``{received, token}``: the device's received count and
  the token for the *next* resume (each token works once).
* REFUSE (device -> client): a UTF-8 reason; the session cannot be resumed.
"""

from __future__ import annotations

import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from remoteler.resume.frames import (
    Frame,
    FrameType,
    ResumeProtocolError,
    decode_control,
    encode,
    encode_control,
)

__all__ = [
    "RESUME_PARAM",
    "SESSION_ID",
    "VERSION",
    "Hello",
    "Resume",
    "Resumed",
    "hello_frame",
    "new_session_id",
    "new_token",
    "parse_hello",
    "parse_resume",
    "parse_resumed",
    "refuse_frame",
    "resume_frame",
    "resumed_frame",
    "token_matches",
]

VERSION = 1
#: ``/v1/connect?...&resume=new`` (a new resumable session) or ``resume=<session id>``
RESUME_PARAM = "resume"
TOKEN_BYTES = 32
SESSION_ID = re.compile(r"^[0-9a-f]{32}$")
#: The first byte of a HELLO: never the first byte of an SSH server's greeting (text).
HELLO_BYTE = int(FrameType.HELLO)
_MAX_COUNT = 1 << 62


def new_session_id() -> str:
    return secrets.token_hex(16)


def new_token() -> bytes:
    return secrets.token_bytes(TOKEN_BYTES)


def token_matches(expected: bytes, given: bytes) -> bool:
    return hmac.compare_digest(expected, given)


@dataclass(frozen=True)
class Hello:
    session_id: str
    token: bytes
    grace: float
    buffer: int


@dataclass(frozen=True)
class Resume:
    session_id: str
    token: bytes
    received: int


@dataclass(frozen=True)
class Resumed:
    received: int
    token: bytes


def hello_frame(h: Hello) -> bytes:
    return encode_control(
        FrameType.HELLO,
        {
            "v": VERSION,
            "id": h.session_id,
            "token": h.token,
            "grace": int(h.grace),
            "buffer": h.buffer,
        },
    )


def resume_frame(r: Resume) -> bytes:
    return encode_control(
        FrameType.RESUME, {"id": r.session_id, "token": r.token, "received": r.received}
    )


def resumed_frame(r: Resumed) -> bytes:
    return encode_control(FrameType.RESUMED, {"received": r.received, "token": r.token})


def refuse_frame(reason: str) -> bytes:
    return encode(FrameType.REFUSE, reason.encode("utf-8")[:1024])


def _want(frame: Frame, ftype: FrameType) -> dict[str, Any]:
    if frame.type != ftype:
        raise ResumeProtocolError(f"expected {ftype.name}, got {frame.type.name}")
    return decode_control(frame)


def _session_id(value: Any) -> str:
    if not isinstance(value, str) or not SESSION_ID.match(value):
        raise ResumeProtocolError("bad session id")
    return value


def _token(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != TOKEN_BYTES:
        raise ResumeProtocolError("bad resume token")
    return value


def _count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < _MAX_COUNT:
        raise ResumeProtocolError("bad byte count")
    return value


def parse_hello(frame: Frame) -> Hello:
    f = _want(frame, FrameType.HELLO)
    if f.get("v") != VERSION:
        raise ResumeProtocolError(f"resume version {f.get('v')!r} is not {VERSION}")
    grace, buffer = f.get("grace"), f.get("buffer")
    return Hello(_session_id(f.get("id")), _token(f.get("token")), _count(grace), _count(buffer))


def parse_resume(frame: Frame) -> Resume:
    f = _want(frame, FrameType.RESUME)
    return Resume(_session_id(f.get("id")), _token(f.get("token")), _count(f.get("received")))


def parse_resumed(frame: Frame) -> Resumed:
    f = _want(frame, FrameType.RESUMED)
    return Resumed(_count(f.get("received")), _token(f.get("token")))
