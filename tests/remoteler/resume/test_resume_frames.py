"""Frames and handshake of the resumable stream: round trips, and any bytes from a peer."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from remoteler.resume.frames import (
    MAX_CONTROL,
    MAX_DATA,
    Frame,
    FrameParser,
    FrameType,
    ResumeProtocolError,
    encode,
    encode_control,
)
from remoteler.resume.handshake import (
    HELLO_BYTE,
    Hello,
    Resume,
    Resumed,
    hello_frame,
    new_session_id,
    new_token,
    parse_hello,
    parse_resume,
    parse_resumed,
    refuse_frame,
    resume_frame,
    resumed_frame,
)


def _one(data: bytes) -> Frame:
    frames = FrameParser().feed(data)
    assert len(frames) == 1
    return frames[0]


def test_handshake_round_trips() -> None:
    hello = Hello(new_session_id(), new_token(), 300, 4 << 20)
    assert parse_hello(_one(hello_frame(hello))) == hello
    resume = Resume(hello.session_id, hello.token, 12345)
    assert parse_resume(_one(resume_frame(resume))) == resume
    resumed = Resumed(99, new_token())
    assert parse_resumed(_one(resumed_frame(resumed))) == resumed
    assert _one(refuse_frame("no")).payload == b"no"


def test_a_hello_never_looks_like_an_ssh_greeting() -> None:
    assert hello_frame(Hello(new_session_id(), new_token(), 1, 1))[0] == HELLO_BYTE
    assert HELLO_BYTE not in b"SSH-2.0-OpenSSH_9.2\r\n"[:1]


@pytest.mark.parametrize(
    "fields",
    [
        {"v": 2, "id": "0" * 32, "token": b"t" * 32, "grace": 1, "buffer": 1},
        {"v": 1, "id": "X" * 32, "token": b"t" * 32, "grace": 1, "buffer": 1},
        {"v": 1, "id": "0" * 32, "token": b"t" * 31, "grace": 1, "buffer": 1},
        {"v": 1, "id": "0" * 32, "token": "t" * 32, "grace": 1, "buffer": 1},
        {"v": 1, "id": "0" * 32, "token": b"t" * 32, "grace": True, "buffer": 1},
        {"v": 1, "id": "0" * 32, "token": b"t" * 32, "grace": -1, "buffer": 1},
        {"v": 1, "id": "0" * 32, "token": b"t" * 32, "grace": 1},
    ],
)
def test_a_bad_hello_is_a_protocol_error(fields: dict[str, object]) -> None:
    with pytest.raises(ResumeProtocolError):
        parse_hello(_one(encode_control(FrameType.HELLO, fields)))


def test_a_frame_of_the_wrong_kind_is_a_protocol_error() -> None:
    with pytest.raises(ResumeProtocolError, match="expected RESUME"):
        parse_resume(_one(resumed_frame(Resumed(1, new_token()))))
    with pytest.raises(ResumeProtocolError, match=r"not msgpack|not a map"):
        parse_resume(_one(encode(FrameType.RESUME, b"\xc1")))
    with pytest.raises(ResumeProtocolError, match="not a map"):
        parse_resume(_one(encode(FrameType.RESUME, msgpack.packb([1, 2]))))


def test_frames_larger_than_allowed_are_refused_before_they_are_read() -> None:
    parser = FrameParser()
    with pytest.raises(ResumeProtocolError):
        parser.feed(bytes([FrameType.DATA]) + (MAX_DATA + 1).to_bytes(4, "big"))
    with pytest.raises(ResumeProtocolError):
        FrameParser().feed(bytes([FrameType.HELLO]) + (MAX_CONTROL + 1).to_bytes(4, "big"))


@given(st.binary(max_size=2048), st.integers(min_value=1, max_value=64))
def test_any_bytes_in_any_split_give_frames_or_a_protocol_error(data: bytes, step: int) -> None:
    parser = FrameParser()
    try:
        for i in range(0, len(data), step):
            for frame in parser.feed(data[i : i + step]):
                if frame.type in (FrameType.HELLO, FrameType.RESUME, FrameType.RESUMED):
                    with contextlib.suppress(ResumeProtocolError):
                        parse_hello(frame)
    except ResumeProtocolError:
        return
    assert parser.pending <= 5 + MAX_DATA


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(min_value=1, max_value=17))
def test_data_frames_survive_any_split(payloads: list[bytes], step: int) -> None:
    wire = b"".join(encode(FrameType.DATA, p) for p in payloads)
    parser = FrameParser()
    frames: list[Frame] = []
    for i in range(0, len(wire), step):
        frames += parser.feed(wire[i : i + step])
    assert [f.payload for f in frames] == payloads
