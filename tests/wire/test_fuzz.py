"""Hypothesis: untrusted input never crashes the core and fails it with a protocol code."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remoteler.wire.codes import ErrorCode
from remoteler.wire.connection import Connection, Role, State
from remoteler.wire.events import ConnectionClosed
from remoteler.wire.frames import (
    CloseFrame,
    DataFrame,
    EofFrame,
    GoAwayFrame,
    OpenFailFrame,
    OpenFrame,
    OpenOkFrame,
    PingFrame,
    PongFrame,
    WindowFrame,
    encode_frame,
)
from remoteler.wire.limits import Limits

LIMITS = Limits(max_frame_bytes=64 * 1024, max_data_chunk=16 * 1024, max_meta_bytes=4096)

PEER_ERRORS = {
    ErrorCode.MALFORMED_FRAME,
    ErrorCode.UNKNOWN_FRAME_TYPE,
    ErrorCode.FRAME_TOO_LARGE,
    ErrorCode.TOO_MANY_CHANNELS,
    ErrorCode.UNKNOWN_CHANNEL,
    ErrorCode.FLOW_CONTROL,
    ErrorCode.CHANNEL_STATE,
    ErrorCode.TEXT_MESSAGE,
}

VALID = [
    encode_frame(f)
    for f in (
        OpenFrame(1, "ssh", {"login": "pi", "n": [1, 2.5, None, True, b"x"]}, 1 << 20),
        OpenOkFrame(2, 1000),
        OpenFailFrame(2, 1, "refused"),
        DataFrame(1, b"payload" * 10),
        WindowFrame(1, 100),
        EofFrame(1),
        CloseFrame(1),
        PingFrame(3, {"v": "1"}),
        PongFrame(3),
        GoAwayFrame(0, "bye"),
        GoAwayFrame(9, "hub restarting", 12_345),
    )
]

small_ints = st.one_of(
    st.integers(min_value=-3, max_value=12),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    small_ints,
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
    ),
    max_leaves=10,
)
frame_like = st.builds(
    lambda head, rest: [head, *rest],
    small_ints,
    st.lists(values, max_size=5),
)


def fresh_cores() -> list[Connection]:
    """A bare listener, and one with an open channel 1 and a pending local channel 2."""
    bare = Connection(Role.LISTENER, LIMITS)
    busy = Connection(Role.LISTENER, LIMITS)
    busy.receive_message(encode_frame(OpenFrame(1, "ssh", {}, 1000)), 0.0)
    busy.accept_channel(1)
    busy.send_data(1, b"x" * 5000)
    busy.open_channel("control", {})
    busy.events_received()
    busy.messages_to_send()
    return [bare, busy]


def feed(messages: list[bytes | str]) -> None:
    for conn in fresh_cores():
        for message in messages:
            conn.receive_message(message, 1.0)  # must never raise
            conn.messages_to_send()
        for event in conn.events_received():
            if isinstance(event, ConnectionClosed) and not event.by_peer:
                assert event.code in PEER_ERRORS, event
                assert conn.state is State.CLOSED


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5))
def test_random_bytes(messages: list[bytes]) -> None:
    feed(list(messages))


@FUZZ
@given(st.lists(frame_like, min_size=1, max_size=6))
def test_random_msgpack_arrays(frames: list[list[Any]]) -> None:
    feed([msgpack.packb(f, use_bin_type=True) for f in frames])


@FUZZ
@given(st.lists(values, min_size=1, max_size=3))
def test_random_msgpack_values(items: list[Any]) -> None:
    feed([msgpack.packb(v, use_bin_type=True) for v in items])


@FUZZ
@given(st.sampled_from(VALID), st.data())
def test_truncated_valid_frames(message: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(min_value=0, max_value=len(message) - 1))
    feed([message[:cut]])


@FUZZ
@given(st.lists(st.sampled_from(VALID), min_size=1, max_size=8), st.text(max_size=3))
def test_valid_frames_in_any_order(messages: list[bytes], text: str) -> None:
    feed([*messages, text])
