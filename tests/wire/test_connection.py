"""The sans-I/O core, driven by an in-memory pump (no sockets, fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from remoteler.wire.codes import ErrorCode, OpenFailure
from remoteler.wire.connection import ChannelState, Connection, Role, State
from remoteler.wire.events import (
    ChannelClosed,
    ChannelOpened,
    ChannelOpenFailed,
    ChannelOpenRequested,
    ConnectionClosed,
    DataReceived,
    EofReceived,
    HeartbeatReceived,
    PongReceived,
    WindowUpdated,
)
from remoteler.wire.exceptions import InvalidState
from remoteler.wire.frames import (
    CloseFrame,
    DataFrame,
    EofFrame,
    Frame,
    GoAwayFrame,
    OpenFailFrame,
    OpenFrame,
    OpenOkFrame,
    PingFrame,
    PongFrame,
    WindowFrame,
    decode_frame,
    encode_frame,
)
from remoteler.wire.limits import Limits


class Pair:
    """A DIALER and a LISTENER core wired back to back (cf. h11's ConnectionPair)."""

    def __init__(self, limits: Limits | None = None, listener_limits: Limits | None = None) -> None:
        limits = limits or Limits()
        self.now = 0.0
        self.dialer = Connection(Role.DIALER, limits)
        self.listener = Connection(Role.LISTENER, listener_limits or limits)

    def peer(self, conn: Connection) -> Connection:
        return self.listener if conn is self.dialer else self.dialer

    def send(self, conn: Connection, limit: int | None = None) -> list[Frame]:
        """Deliver one batch of ``conn``'s output to its peer; return the frames."""
        messages = conn.messages_to_send(limit)
        for message in messages:
            self.peer(conn).receive_message(message, self.now)
        return [decode_frame(m, conn.limits) for m in messages]

    def pump(self) -> None:
        """Exchange messages until both sides are quiet."""
        while self.send(self.dialer) + self.send(self.listener):
            pass

    def open(self, kind: str = "ssh", meta: dict[str, Any] | None = None) -> int:
        channel_id = self.dialer.open_channel(kind, meta or {})
        self.pump()
        (request,) = self.listener.events_received()
        assert isinstance(request, ChannelOpenRequested)
        self.listener.accept_channel(channel_id)
        self.pump()
        assert self.dialer.events_received() == [ChannelOpened(channel_id)]
        return channel_id


def received(conn: Connection, channel_id: int) -> bytes:
    """Concatenate DataReceived payloads and consume them, as an application would."""
    out = b""
    for event in conn.events_received():
        if isinstance(event, DataReceived):
            assert event.channel_id == channel_id
            out += event.data
    if out:
        conn.consume(channel_id, len(out))
    return out


def closed_event(conn: Connection) -> ConnectionClosed:
    events = conn.events_received()
    assert events and isinstance(events[-1], ConnectionClosed), events
    return events[-1]


def inject(conn: Connection, frame: Frame, now: float = 0.0) -> None:
    conn.receive_message(encode_frame(frame), now)


def assert_failed(conn: Connection, code: ErrorCode, peer: Connection | None = None) -> None:
    """Check ``conn`` failed with ``code``, then deliver its output to ``peer`` if given."""
    event = closed_event(conn)
    assert event.code is code and not event.by_peer, event
    assert conn.state is State.CLOSED
    assert conn.open_channel_count == 0
    # The peer is told with a generic reason.
    messages = conn.messages_to_send()
    assert decode_frame(messages[-1], conn.limits) == GoAwayFrame(code, code.name)
    if peer is not None:
        for message in messages:
            peer.receive_message(message, 0.0)


# -- opening ------------------------------------------------------------------


def test_open_accept_ids_and_states() -> None:
    pair = Pair()
    channel_id = pair.dialer.open_channel("ssh", {"login": "pi"})
    assert channel_id == 1
    assert pair.dialer.channel_state(1) is ChannelState.OPENING
    pair.pump()
    assert pair.listener.events_received() == [ChannelOpenRequested(1, "ssh", {"login": "pi"})]
    assert pair.listener.channel_state(1) is ChannelState.PENDING
    pair.listener.accept_channel(1)
    assert pair.listener.channel_state(1) is ChannelState.OPEN
    pair.pump()
    assert pair.dialer.events_received() == [ChannelOpened(1)]
    assert pair.dialer.channel_state(1) is ChannelState.OPEN
    assert pair.dialer.open_channel("audit", {}) == 3
    assert pair.listener.open_channel("control", {}) == 2
    assert pair.listener.open_channel("control", {}) == 4
    assert pair.dialer.open_channel_count == 2  # the listener's OPENs are not sent yet
    pair.pump()
    assert pair.dialer.open_channel_count == pair.listener.open_channel_count == 4


def test_reject() -> None:
    pair = Pair()
    pair.dialer.open_channel("ftp", {})
    pair.pump()
    pair.listener.events_received()
    pair.listener.reject_channel(1, OpenFailure.UNKNOWN_KIND, "no ftp here")
    assert pair.listener.channel_state(1) is ChannelState.CLOSED
    pair.pump()
    assert pair.dialer.events_received() == [
        ChannelOpenFailed(1, OpenFailure.UNKNOWN_KIND, "no ftp here")
    ]
    assert pair.dialer.open_channel_count == pair.listener.open_channel_count == 0
    with pytest.raises(InvalidState):
        pair.listener.accept_channel(1)


def test_unknown_open_failure_code_is_kept_as_int() -> None:
    pair = Pair()
    pair.dialer.open_channel("ssh", {})
    pair.dialer.messages_to_send()
    inject(pair.dialer, OpenFailFrame(1, 77, "x"))
    assert pair.dialer.events_received() == [ChannelOpenFailed(1, 77, "x")]


def test_accept_and_reject_need_a_pending_request() -> None:
    pair = Pair()
    channel_id = pair.open()
    with pytest.raises(InvalidState):
        pair.listener.accept_channel(channel_id)
    with pytest.raises(InvalidState):
        pair.listener.reject_channel(99, OpenFailure.REFUSED, "")
    with pytest.raises(InvalidState):
        pair.dialer.open_channel("", {})


def test_close_pending_request_rejects_it() -> None:
    pair = Pair()
    pair.dialer.open_channel("ssh", {})
    pair.pump()
    pair.listener.events_received()
    pair.listener.close_channel(1)
    pair.pump()
    assert pair.dialer.events_received() == [ChannelOpenFailed(1, OpenFailure.REFUSED, "closed")]


# -- data -----------------------------------------------------------------------


def test_data_both_ways_and_coalescing() -> None:
    pair = Pair()
    channel_id = pair.open()
    for part in (b"he", b"ll", b"o"):
        pair.dialer.send_data(channel_id, part)
    assert pair.dialer.buffered_amount(channel_id) == 5
    frames = pair.send(pair.dialer)
    assert frames == [DataFrame(channel_id, b"hello")]  # small writes share one frame
    assert pair.dialer.buffered_amount(channel_id) == 0
    assert received(pair.listener, channel_id) == b"hello"
    pair.listener.send_data(channel_id, bytearray(b"world"))
    pair.pump()
    assert received(pair.dialer, channel_id) == b"world"


def test_large_write_is_cut_into_chunks() -> None:
    limits = Limits(max_data_chunk=1000)
    pair = Pair(limits)
    channel_id = pair.open()
    data = bytes(range(256)) * 10
    pair.dialer.send_data(channel_id, data[:700])
    pair.dialer.send_data(channel_id, data[700:])
    frames = pair.send(pair.dialer)
    assert [len(f.payload) for f in frames if isinstance(f, DataFrame)] == [1000, 1000, 560]
    assert received(pair.listener, channel_id) == data


def test_data_written_while_opening_is_sent_after_open_ok() -> None:
    pair = Pair()
    channel_id = pair.dialer.open_channel("ssh", {})
    pair.dialer.send_data(channel_id, b"early")
    pair.dialer.send_eof(channel_id)
    assert [type(f) for f in pair.send(pair.dialer)] == [OpenFrame]
    pair.listener.events_received()
    pair.listener.accept_channel(channel_id)
    pair.send(pair.listener)
    assert pair.send(pair.dialer) == [DataFrame(channel_id, b"early"), EofFrame(channel_id)]


def test_send_data_misuse() -> None:
    pair = Pair()
    pair.dialer.open_channel("ssh", {})
    pair.pump()
    with pytest.raises(InvalidState):
        pair.listener.send_data(1, b"x")  # PENDING
    with pytest.raises(InvalidState):
        pair.dialer.send_data(99, b"x")  # unknown
    pair.listener.accept_channel(1)
    pair.pump()
    pair.dialer.send_eof(1)
    with pytest.raises(InvalidState):
        pair.dialer.send_data(1, b"x")
    pair.dialer.close_channel(1)
    with pytest.raises(InvalidState):
        pair.dialer.send_data(1, b"x")
    assert pair.dialer.buffered_amount(12345) == 0


def test_consume_more_than_received_is_misuse() -> None:
    pair = Pair()
    channel_id = pair.open()
    pair.dialer.send_data(channel_id, b"abc")
    pair.pump()
    with pytest.raises(InvalidState):
        pair.listener.consume(channel_id, 4)
    pair.listener.consume(channel_id, 3)
    pair.listener.consume(999, 10)  # unknown: no-op


# -- EOF and close ---------------------------------------------------------------


def test_eof_then_data_the_other_way() -> None:
    pair = Pair()
    channel_id = pair.open()
    pair.dialer.send_data(channel_id, b"request")
    pair.dialer.send_eof(channel_id)
    pair.dialer.send_eof(channel_id)  # idempotent
    pair.pump()
    events = pair.listener.events_received()
    assert events == [DataReceived(channel_id, b"request"), EofReceived(channel_id)]
    pair.listener.send_data(channel_id, b"response")
    pair.pump()
    assert received(pair.dialer, channel_id) == b"response"


def test_data_after_eof_is_a_channel_state_error() -> None:
    pair = Pair()
    channel_id = pair.open()
    pair.dialer.send_eof(channel_id)
    pair.pump()
    pair.listener.events_received()
    inject(pair.listener, DataFrame(channel_id, b"late"))
    assert_failed(pair.listener, ErrorCode.CHANNEL_STATE)


@pytest.mark.parametrize("first", ["dialer", "listener"])
def test_close_handshake(first: str) -> None:
    pair = Pair()
    channel_id = pair.open()
    closer = pair.dialer if first == "dialer" else pair.listener
    other = pair.peer(closer)
    closer.close_channel(channel_id)
    assert closer.channel_state(channel_id) is ChannelState.CLOSING
    assert pair.send(closer) == [CloseFrame(channel_id)]
    # The peer answers automatically and is done.
    assert other.events_received() == [ChannelClosed(channel_id)]
    assert other.channel_state(channel_id) is ChannelState.CLOSED
    assert pair.send(other) == [CloseFrame(channel_id)]
    assert closer.events_received() == [ChannelClosed(channel_id)]
    assert closer.open_channel_count == other.open_channel_count == 0
    closer.close_channel(channel_id)  # no-op once closed
    closer.send_eof(channel_id)
    assert closer.messages_to_send() == []


def test_close_crossing() -> None:
    pair = Pair()
    channel_id = pair.open()
    pair.dialer.close_channel(channel_id)
    pair.listener.close_channel(channel_id)
    pair.pump()
    assert pair.dialer.events_received() == [ChannelClosed(channel_id)]
    assert pair.listener.events_received() == [ChannelClosed(channel_id)]
    assert pair.dialer.open_channel_count == pair.listener.open_channel_count == 0
    # The id may be reused once both sides forgot it.
    pair.dialer._next_id = channel_id
    assert pair.open() == channel_id


def test_close_flushes_data_and_eof_first() -> None:
    pair = Pair()
    channel_id = pair.open()
    pair.dialer.send_data(channel_id, b"last words")
    pair.dialer.send_eof(channel_id)
    pair.dialer.close_channel(channel_id)
    assert pair.send(pair.dialer) == [
        DataFrame(channel_id, b"last words"),
        EofFrame(channel_id),
        CloseFrame(channel_id),
    ]


def test_close_while_opening_waits_for_the_answer() -> None:
    pair = Pair()
    channel_id = pair.dialer.open_channel("ssh", {})
    pair.dialer.close_channel(channel_id)
    assert pair.dialer.channel_state(channel_id) is ChannelState.CLOSING
    pair.send(pair.dialer)
    pair.listener.events_received()
    pair.listener.accept_channel(channel_id)
    pair.pump()
    assert pair.dialer.events_received() == [ChannelOpened(channel_id), ChannelClosed(channel_id)]
    assert pair.listener.events_received() == [ChannelClosed(channel_id)]


def test_peer_close_drops_unsent_data() -> None:
    pair = Pair(listener_limits=Limits(initial_window=10))
    channel_id = pair.open()
    pair.dialer.send_data(channel_id, b"x" * 100)
    pair.send(pair.dialer)
    assert pair.dialer.buffered_amount(channel_id) == 90
    pair.listener.close_channel(channel_id)
    pair.send(pair.listener)
    assert pair.dialer.events_received() == [ChannelClosed(channel_id)]
    assert pair.send(pair.dialer) == [CloseFrame(channel_id)]


def test_data_window_and_eof_on_closing_channel_are_dropped() -> None:
    pair = Pair()
    channel_id = pair.open()
    pair.listener.send_data(channel_id, b"in flight")
    pair.listener.send_eof(channel_id)
    pair.dialer.close_channel(channel_id)
    pair.send(pair.dialer)  # our CLOSE crosses the peer's DATA/EOF
    inject(pair.dialer, WindowFrame(channel_id, 5))
    pair.send(pair.listener)
    assert pair.dialer.state is State.OPEN
    assert pair.dialer.events_received() == [ChannelClosed(channel_id)]


# -- flow control ----------------------------------------------------------------


def test_sender_stops_at_window_and_resumes_after_consume() -> None:
    small = Limits(initial_window=1000, max_data_chunk=300)
    pair = Pair(small)
    channel_id = pair.open()
    pair.dialer.send_data(channel_id, b"a" * 5000)
    frames = pair.send(pair.dialer)
    assert [len(f.payload) for f in frames if isinstance(f, DataFrame)] == [300, 300, 300, 100]
    assert pair.send(pair.dialer) == []
    assert pair.dialer.buffered_amount(channel_id) == 4000
    events = pair.listener.events_received()
    assert sum(len(e.data) for e in events if isinstance(e, DataReceived)) == 1000
    pair.listener.consume(channel_id, 499)
    assert pair.listener.messages_to_send() == []  # below half the window: no WINDOW yet
    pair.listener.consume(channel_id, 1)
    assert pair.send(pair.listener) == [WindowFrame(channel_id, 500)]
    assert pair.dialer.events_received() == [WindowUpdated(channel_id)]
    frames = pair.send(pair.dialer)
    assert sum(len(f.payload) for f in frames if isinstance(f, DataFrame)) == 500
    assert pair.dialer.buffered_amount(channel_id) == 3500
    # Draining everything: consume as it arrives.
    total = 1500
    for _ in range(100):
        pair.pump()
        total += len(received(pair.listener, channel_id))
        if total >= 5000:
            break
    assert total == 5000


def test_peer_overrunning_window_is_flow_control_error() -> None:
    pair = Pair(Limits(initial_window=100))
    channel_id = pair.open()
    inject(pair.listener, DataFrame(channel_id, b"x" * 60))
    inject(pair.listener, DataFrame(channel_id, b"x" * 41))
    assert_failed(pair.listener, ErrorCode.FLOW_CONTROL, peer=pair.dialer)
    event = closed_event(pair.dialer)
    assert (event.code, event.reason, event.by_peer) == (
        ErrorCode.FLOW_CONTROL,
        "FLOW_CONTROL",
        True,
    )


def test_window_overflow_is_flow_control_error() -> None:
    pair = Pair()
    channel_id = pair.open()
    inject(pair.dialer, WindowFrame(channel_id, (64 << 20) - (4 << 20)))  # exactly max: fine
    assert pair.dialer.state is State.OPEN
    inject(pair.dialer, WindowFrame(channel_id, 1))
    assert_failed(pair.dialer, ErrorCode.FLOW_CONTROL)


def test_initial_window_above_max_is_flow_control_error() -> None:
    conn = Connection(Role.LISTENER)
    inject(conn, OpenFrame(1, "ssh", {}, (64 << 20) + 1))
    assert_failed(conn, ErrorCode.FLOW_CONTROL)


def test_round_robin_between_channels() -> None:
    pair = Pair(Limits(max_data_chunk=1000))
    bulk = pair.open()
    other = pair.open()
    pair.dialer.send_data(bulk, b"b" * 10_000)
    pair.dialer.send_data(other, b"o" * 3000)
    frames = pair.send(pair.dialer)
    order = [f.channel_id for f in frames if isinstance(f, DataFrame)]
    assert order[:6] == [bulk, other, bulk, other, bulk, other]
    assert order[6:] == [bulk] * 7


def test_messages_to_send_limit_keeps_rotation() -> None:
    pair = Pair(Limits(max_data_chunk=1000))
    a, b = pair.open(), pair.open()
    pair.dialer.send_data(a, b"a" * 5000)
    pair.dialer.send_data(b, b"b" * 5000)
    first = pair.dialer.messages_to_send(limit=1500)
    second = pair.dialer.messages_to_send(limit=1000)
    ids = [decode_frame(m, Limits()).channel_id for m in first + second]  # type: ignore[union-attr]
    assert ids == [a, b, a]


# -- channel limits and bad ids --------------------------------------------------


def test_max_channels() -> None:
    pair = Pair(Limits(max_channels=2))
    pair.open()
    pair.open()
    with pytest.raises(InvalidState):
        pair.dialer.open_channel("ssh", {})
    # The listener counts its own channels separately.
    assert pair.listener.open_channel("control", {}) == 2


def test_peer_exceeding_max_channels_fails_tunnel() -> None:
    pair = Pair(Limits(max_channels=3), listener_limits=Limits(max_channels=2))
    for _ in range(3):
        pair.dialer.open_channel("ssh", {})
    pair.send(pair.dialer)
    assert_failed(pair.listener, ErrorCode.TOO_MANY_CHANNELS, peer=pair.dialer)
    assert closed_event(pair.dialer).code is ErrorCode.TOO_MANY_CHANNELS


def test_closed_channels_free_their_slot() -> None:
    pair = Pair(Limits(max_channels=1))
    for _ in range(3):
        channel_id = pair.open()
        pair.listener.close_channel(channel_id)
        pair.pump()
        pair.dialer.events_received()
        pair.listener.events_received()
    assert pair.listener.state is State.OPEN


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (DataFrame(99, b"x"), ErrorCode.UNKNOWN_CHANNEL),
        (WindowFrame(99, 1), ErrorCode.UNKNOWN_CHANNEL),
        (EofFrame(99), ErrorCode.UNKNOWN_CHANNEL),
        (CloseFrame(99), ErrorCode.UNKNOWN_CHANNEL),
        (OpenOkFrame(99, 10), ErrorCode.UNKNOWN_CHANNEL),
        (OpenFrame(2, "ssh", {}, 10), ErrorCode.CHANNEL_STATE),  # our parity
        (OpenFrame(1, "ssh", {}, 10), ErrorCode.CHANNEL_STATE),  # in use
        (OpenOkFrame(1, 10), ErrorCode.CHANNEL_STATE),  # not ours to confirm
    ],
)
def test_bad_channel_ids(frame: Frame, code: ErrorCode) -> None:
    pair = Pair()
    pair.open()
    inject(pair.listener, frame)
    assert_failed(pair.listener, code)


@pytest.mark.parametrize(
    "frame", [DataFrame(1, b"x"), WindowFrame(1, 1), EofFrame(1), CloseFrame(1)]
)
def test_frames_before_accept_are_channel_state_errors(frame: Frame) -> None:
    conn = Connection(Role.LISTENER)
    inject(conn, OpenFrame(1, "ssh", {}, 10))
    conn.events_received()
    inject(conn, frame)
    assert_failed(conn, ErrorCode.CHANNEL_STATE)


def test_data_before_open_ok_is_channel_state_error() -> None:
    conn = Connection(Role.DIALER)
    conn.open_channel("ssh", {})
    inject(conn, DataFrame(1, b"x"))
    assert_failed(conn, ErrorCode.CHANNEL_STATE)


# -- tunnel-level errors -----------------------------------------------------------


def test_text_message_fails_tunnel() -> None:
    pair = Pair()
    pair.listener.receive_message("hello", 0.0)
    assert_failed(pair.listener, ErrorCode.TEXT_MESSAGE)


def test_oversized_message_fails_tunnel() -> None:
    limits = Limits(max_frame_bytes=4096, max_data_chunk=1024, max_meta_bytes=1024)
    conn = Connection(Role.LISTENER, limits)
    conn.receive_message(b"\x00" * 4097, 0.0)
    assert_failed(conn, ErrorCode.FRAME_TOO_LARGE)


def test_fail_keeps_detail_local() -> None:
    pair = Pair()
    pair.open()
    pair.dialer.fail(ErrorCode.INTERNAL, "secret internal detail")
    event = closed_event(pair.dialer)
    assert event == ConnectionClosed(ErrorCode.INTERNAL, "secret internal detail", by_peer=False)
    pair.send(pair.dialer)
    assert closed_event(pair.listener) == ConnectionClosed(
        ErrorCode.INTERNAL, "INTERNAL", by_peer=True
    )


def test_graceful_close_and_goaway() -> None:
    pair = Pair()
    channel_id = pair.open()
    pair.dialer.send_data(channel_id, b"flushed before goaway")
    pair.dialer.close(ErrorCode.GOING_AWAY, "restarting")
    assert pair.dialer.state is State.CLOSED
    assert closed_event(pair.dialer) == ConnectionClosed(
        ErrorCode.GOING_AWAY, "restarting", by_peer=False
    )
    frames = pair.send(pair.dialer)
    assert frames == [
        DataFrame(channel_id, b"flushed before goaway"),
        GoAwayFrame(ErrorCode.GOING_AWAY, "restarting"),
    ]
    events = pair.listener.events_received()
    assert events == [
        DataReceived(channel_id, b"flushed before goaway"),
        ConnectionClosed(ErrorCode.GOING_AWAY, "restarting", by_peer=True),
    ]
    assert pair.listener.state is State.CLOSED
    assert pair.listener.open_channel_count == 0
    assert pair.listener.get_timer() is None
    # Everything after CLOSED is ignored or refused.
    pair.listener.receive_message(b"garbage", 1.0)
    pair.listener.receive_message("text", 1.0)
    assert pair.listener.events_received() == []
    assert pair.listener.messages_to_send() == []
    with pytest.raises(InvalidState):
        pair.listener.open_channel("ssh", {})
    with pytest.raises(InvalidState):
        pair.listener.send_data(channel_id, b"x")
    pair.listener.close_channel(channel_id)
    pair.listener.close()
    pair.listener.fail(ErrorCode.INTERNAL, "again")
    assert pair.listener.events_received() == []


def test_goaway_retry_after() -> None:
    pair = Pair()
    pair.listener.close(ErrorCode.GOING_AWAY, "hub restarting", retry_after=12.3456)
    assert closed_event(pair.listener) == ConnectionClosed(
        ErrorCode.GOING_AWAY, "hub restarting", by_peer=False
    )
    assert pair.send(pair.listener) == [GoAwayFrame(ErrorCode.GOING_AWAY, "hub restarting", 12346)]
    assert closed_event(pair.dialer) == ConnectionClosed(
        ErrorCode.GOING_AWAY, "hub restarting", by_peer=True, retry_after=12.346
    )
    # Without one, the peer sees None.
    pair = Pair()
    pair.listener.close(ErrorCode.GOING_AWAY, "bye")
    pair.send(pair.listener)
    assert closed_event(pair.dialer).retry_after is None


@pytest.mark.parametrize("retry_after", [-0.001, 3600.001, float("nan"), float("inf")])
def test_goaway_retry_after_out_of_range_is_misuse(retry_after: float) -> None:
    conn = Connection(Role.LISTENER)
    with pytest.raises(InvalidState):
        conn.close(ErrorCode.GOING_AWAY, "x", retry_after=retry_after)
    assert conn.state is State.OPEN
    conn.close(ErrorCode.GOING_AWAY, "x", retry_after=3600)
    assert decode_frame(conn.messages_to_send()[-1], conn.limits) == GoAwayFrame(9, "x", 3_600_000)


def test_malformed_retry_after_from_peer_fails_tunnel() -> None:
    conn = Connection(Role.DIALER)
    conn.receive_message(bytes([0x94, 10, 9, 0xA0, 0xC3]), 0.0)  # [10, 9, "", true]
    assert_failed(conn, ErrorCode.MALFORMED_FRAME)


def test_unknown_goaway_code_from_peer() -> None:
    conn = Connection(Role.DIALER)
    inject(conn, GoAwayFrame(500, "future"))
    event = closed_event(conn)
    assert event.by_peer and event.code is ErrorCode.INTERNAL and "500" in event.reason


def test_connection_lost() -> None:
    conn = Connection(Role.DIALER)
    conn.open_channel("ssh", {})
    conn.connection_lost("socket reset")
    assert closed_event(conn) == ConnectionClosed(ErrorCode.GOING_AWAY, "socket reset", True)
    assert conn.state is State.CLOSED


# -- heartbeats -----------------------------------------------------------------


def heartbeat_pair() -> Pair:
    agent = Limits(heartbeat_interval=10.0, allowed_misses=3, send_heartbeats=True)
    hub = Limits(heartbeat_interval=10.0, allowed_misses=3)
    return Pair(agent, listener_limits=hub)


def test_ping_pong_with_fake_clock() -> None:
    pair = heartbeat_pair()
    assert pair.dialer.get_timer() == 10.0
    assert pair.listener.get_timer() == 30.0
    pair.dialer.heartbeat_payload = {"labels": {"site": "a"}, "backlog": 0}
    pair.dialer.handle_timer(5.0)
    assert pair.dialer.messages_to_send() == []
    pair.now = 10.0
    pair.dialer.handle_timer(10.0)
    assert pair.dialer.get_timer() == 20.0
    pair.send(pair.dialer)
    assert pair.listener.events_received() == [
        HeartbeatReceived({"labels": {"site": "a"}, "backlog": 0})
    ]
    assert pair.listener.last_received == 10.0
    assert pair.listener.get_timer() == 40.0
    pair.now = 10.25
    assert pair.send(pair.listener) == [PongFrame(0)]
    assert pair.dialer.events_received() == [PongReceived(0, 0.25)]
    # An unsolicited PONG is ignored.
    inject(pair.dialer, PongFrame(77), now=11.0)
    assert pair.dialer.events_received() == []


def test_the_first_ping_with_a_status_goes_when_the_timers_start() -> None:
    # The agent's status (serial ports, labels) is known to the hub at connect,
    # not one heartbeat interval later; then every interval as before.
    pair = heartbeat_pair()
    pair.dialer.heartbeat_payload = {"serial_ports": ["/dev/ttyUSB0"]}
    pair.dialer.start_timers(100.0)
    assert pair.dialer.get_timer() == 100.0
    pair.now = 100.0
    pair.dialer.handle_timer(100.0)
    assert pair.dialer.get_timer() == 110.0
    pair.send(pair.dialer)
    assert pair.listener.events_received() == [
        HeartbeatReceived({"serial_ports": ["/dev/ttyUSB0"]})
    ]
    bare = heartbeat_pair()  # no status yet: nothing to say early
    bare.dialer.start_timers(100.0)
    assert bare.dialer.get_timer() == 110.0


def test_the_hub_can_probe_with_a_ping_of_its_own() -> None:
    """Connection.ping (hub/api/linkprobe.py): a PING without payload from the end that
    sends no heartbeats; the agent answers PONG, which moves last_received."""
    pair = heartbeat_pair()
    pair.now = 25.0
    pair.listener.ping(25.0)
    assert pair.send(pair.listener) == [PingFrame(0, None)]
    assert pair.dialer.events_received() == [HeartbeatReceived(None)]
    pair.now = 25.5
    assert pair.send(pair.dialer) == [PongFrame(0)]
    assert pair.listener.events_received() == [PongReceived(0, 0.5)]
    assert pair.listener.last_received == 25.5
    pair.listener.close()
    with pytest.raises(InvalidState):
        pair.listener.ping(26.0)


def test_pings_continue_while_busy() -> None:
    pair = heartbeat_pair()
    channel_id = pair.open()
    for t in (10.0, 20.0, 30.0):
        pair.now = t
        pair.dialer.send_data(channel_id, b"busy")
        pair.dialer.handle_timer(t)
        pair.pump()
        events = pair.listener.events_received()
        assert any(isinstance(e, HeartbeatReceived) for e in events)
        pair.listener.consume(channel_id, 4)


def test_silence_fails_both_sides_with_heartbeat_timeout() -> None:
    pair = heartbeat_pair()
    # The agent keeps pinging, but nothing comes back (a dead link both ways).
    for t in (10.0, 20.0):
        pair.dialer.handle_timer(t)
        pair.dialer.messages_to_send()
        pair.listener.handle_timer(t)
    assert pair.dialer.state is pair.listener.state is State.OPEN
    pair.dialer.handle_timer(30.0)
    pair.listener.handle_timer(29.9)
    assert_failed(pair.dialer, ErrorCode.HEARTBEAT_TIMEOUT)
    assert pair.listener.state is State.OPEN
    pair.listener.handle_timer(30.0)
    assert_failed(pair.listener, ErrorCode.HEARTBEAT_TIMEOUT)


def test_ping_flood_without_reading_fails_at_the_control_cap() -> None:
    """A peer that sends PINGs and never lets our PONGs out cannot pile them up."""
    hub = Connection(Role.LISTENER, Limits(max_queued_control=64))
    for seq in range(64):
        inject(hub, PingFrame(seq, None))
    assert hub.state is State.OPEN and hub.queued_control == 64
    inject(hub, PingFrame(64, None))
    assert hub.queued_control == 1  # the unsent PONGs are dropped; only GOAWAY is left
    assert_failed(hub, ErrorCode.FLOW_CONTROL)
    for seq in range(1000):  # more input after the failure queues nothing
        inject(hub, PingFrame(seq, None))
    assert hub.queued_control == 0


def test_a_peer_that_reads_its_pongs_may_ping_for_ever() -> None:
    hub = Connection(Role.LISTENER, Limits(max_queued_control=64))
    for seq in range(10_000):
        inject(hub, PingFrame(seq, None))
        if hub.queued_control >= 32:
            assert len(hub.messages_to_send()) == 32
    assert hub.state is State.OPEN


def test_max_queued_control_is_checked() -> None:
    with pytest.raises(ValueError, match="max_queued_control"):
        Limits(max_queued_control=0)


def test_heartbeats_disabled() -> None:
    conn = Connection(Role.LISTENER, Limits(heartbeat_interval=0))
    assert conn.get_timer() is None
    conn.handle_timer(1e9)
    assert conn.state is State.OPEN


def test_events_are_frozen() -> None:
    event = ChannelOpened(1)
    with pytest.raises(AttributeError):
        event.channel_id = 2  # type: ignore[misc]
