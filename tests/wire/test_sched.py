"""Which channel's data goes out next: priority classes, sparse first, byte fairness."""

from __future__ import annotations

from collections import Counter

from test_connection import Pair

from remoteler.wire.connection import Connection
from remoteler.wire.frames import DataFrame, Frame, PingFrame, PongFrame, encode_frame
from remoteler.wire.limits import Limits
from remoteler.wire.sched import LOWER_SHARE, Priority, priority_for_kind

KiB = 1024
CHUNK = Limits().max_data_chunk
QUANTUM = Limits().data_quantum
# Room for several MiB in flight without the receiver consuming.
BIG = Limits(initial_window=32 << 20)


def data(frames: list[Frame]) -> list[DataFrame]:
    return [f for f in frames if isinstance(f, DataFrame)]


def next_frame(pair: Pair, conn: Connection) -> DataFrame:
    """One writer step, as the asyncio adapter takes them: exactly one DATA frame."""
    (frame,) = data(pair.send(conn, limit=1))
    return frame


def test_default_priorities_by_kind() -> None:
    assert priority_for_kind("ssh") is Priority.NORMAL
    assert priority_for_kind("audit") is Priority.LOW
    assert priority_for_kind("firmware") is Priority.LOW
    assert priority_for_kind("something-new") is Priority.NORMAL


def test_keystroke_overtakes_backlogged_bulk_and_audit() -> None:
    pair = Pair(BIG)
    bulk, audit, tty = pair.open("ssh"), pair.open("audit"), pair.open("ssh")
    pair.dialer.send_data(bulk, b"b" * (4 << 20))
    pair.dialer.send_data(audit, b"a" * (4 << 20))
    for _ in range(20):
        frame = next_frame(pair, pair.dialer)
        assert frame.channel_id in (bulk, audit)
        assert len(frame.payload) == QUANTUM  # two channels ready: quantum-sized frames
    pair.dialer.send_data(tty, b"l")
    assert next_frame(pair, pair.dialer) == DataFrame(tty, b"l")
    # A reply of a few KiB is just as quick.
    pair.dialer.send_data(tty, b"x" * 3000)
    assert next_frame(pair, pair.dialer) == DataFrame(tty, b"x" * 3000)


def test_keystroke_waits_behind_at_most_a_quantum_of_a_lone_audit_transfer() -> None:
    pair = Pair(BIG)
    audit, tty = pair.open("audit"), pair.open("ssh")
    pair.dialer.send_data(audit, b"a" * (1 << 20))
    frames = data(pair.send(pair.dialer, limit=1))
    assert [len(f.payload) for f in frames] == [QUANTUM]  # LOW never sends whole chunks
    pair.dialer.send_data(tty, b"l")
    assert next_frame(pair, pair.dialer) == DataFrame(tty, b"l")


def test_control_frames_go_before_data() -> None:
    pair = Pair(BIG)
    bulk = pair.open("ssh")
    pair.dialer.send_data(bulk, b"b" * (1 << 20))
    pair.dialer.receive_message(encode_frame(PingFrame(7, None)), 0.0)
    frames = pair.send(pair.dialer, limit=1)
    assert frames[0] == PongFrame(7) and len(data(frames)) == 1


def test_a_channel_alone_still_sends_whole_chunks() -> None:
    pair = Pair(BIG)
    bulk = pair.open("ssh")
    pair.open("audit")  # open but idle: does not change the bulk path
    pair.dialer.send_data(bulk, b"b" * (1 << 20))
    pair.dialer.send_data(bulk, b"c" * 1000)
    assert [len(f.payload) for f in data(pair.send(pair.dialer))] == [CHUNK] * 4 + [1000]


def test_low_is_not_starved_by_a_saturating_normal_channel() -> None:
    pair = Pair(BIG)
    bulk, audit = pair.open("ssh"), pair.open("audit")
    pair.dialer.send_data(bulk, b"b" * (8 << 20))
    pair.dialer.send_data(audit, b"a" * (1 << 20))
    ids = [next_frame(pair, pair.dialer).channel_id for _ in range(3 * (LOWER_SHARE + 1))]
    assert ids == ([bulk] * LOWER_SHARE + [audit]) * 3
    # Once the NORMAL channel is done, LOW has the link to itself.
    frames = data(pair.send(pair.dialer))
    assert frames[-1].channel_id == audit


def test_high_before_normal_and_normal_still_progresses() -> None:
    pair = Pair(BIG)
    rpc = pair.dialer.open_channel("control", {}, priority=Priority.HIGH)
    pair.pump()
    pair.listener.events_received()
    pair.listener.accept_channel(rpc)
    pair.pump()
    pair.dialer.events_received()
    bulk = pair.open("ssh")
    pair.dialer.send_data(bulk, b"b" * (1 << 20))
    pair.dialer.send_data(rpc, b"r" * (1 << 20))
    ids = [next_frame(pair, pair.dialer).channel_id for _ in range(2 * (LOWER_SHARE + 1))]
    assert ids == ([rpc] * LOWER_SHARE + [bulk]) * 2  # first written, still second


def test_priority_override_and_accept_side_default() -> None:
    pair = Pair(BIG)
    # The opener demotes an ssh channel and promotes an audit channel.
    scp = pair.dialer.open_channel("ssh", {}, priority=Priority.LOW)
    audit = pair.dialer.open_channel("audit", {}, priority=Priority.NORMAL)
    pair.pump()
    pair.listener.events_received()
    pair.listener.accept_channel(scp)
    pair.listener.accept_channel(audit)
    pair.pump()
    pair.dialer.events_received()
    pair.dialer.send_data(scp, b"s" * (1 << 20))
    pair.dialer.send_data(audit, b"a" * (1 << 20))
    ids = [next_frame(pair, pair.dialer).channel_id for _ in range(LOWER_SHARE + 1)]
    assert ids == [audit] * LOWER_SHARE + [scp]
    # The acceptor picks its own class for what it sends: by kind unless told.
    pair = Pair(BIG)
    audit = pair.open("audit")
    tty = pair.open("ssh")
    pair.listener.send_data(audit, b"k" * (1 << 20))
    pair.listener.send_data(tty, b"t" * (1 << 20))
    ids = [next_frame(pair, pair.listener).channel_id for _ in range(LOWER_SHARE + 1)]
    assert Counter(ids) == {tty: LOWER_SHARE, audit: 1}


def test_backlogged_channels_share_bytes_not_frames() -> None:
    pair = Pair(BIG)
    a, b = pair.open("ssh"), pair.open("ssh")
    pair.dialer.send_data(a, b"a" * (2 << 20))  # one big write
    for _ in range(512):
        pair.dialer.send_data(b, b"b" * (4 * KiB))  # many small ones
    sent: Counter[int] = Counter()
    for _ in range(64):
        frame = next_frame(pair, pair.dialer)
        assert len(frame.payload) <= QUANTUM
        sent[frame.channel_id] += len(frame.payload)
    assert abs(sent[a] - sent[b]) <= QUANTUM
    assert sent[a] + sent[b] == 64 * QUANTUM


def test_a_channel_refilling_just_in_time_cannot_starve_the_backlog() -> None:
    # It is empty whenever it writes, so it looks sparse each time; its sparse
    # allowance (one quantum) renews only when a backlogged channel is served.
    pair = Pair(BIG)
    bulk, greedy = pair.open("ssh"), pair.open("ssh")
    pair.dialer.send_data(bulk, b"b" * (8 << 20))
    sent: Counter[int] = Counter()
    for _ in range(60):
        if not pair.dialer.buffered_amount(greedy):
            pair.dialer.send_data(greedy, b"g" * QUANTUM)
        frame = next_frame(pair, pair.dialer)
        sent[frame.channel_id] += len(frame.payload)
    assert sent[bulk] >= sent[greedy] / 3


def test_sparse_data_larger_than_a_quantum_goes_to_the_back_after_one() -> None:
    pair = Pair(BIG)
    a, b = pair.open("ssh"), pair.open("ssh")
    pair.dialer.send_data(a, b"a" * (1 << 20))
    assert next_frame(pair, pair.dialer).channel_id == a  # alone: a whole chunk
    pair.dialer.send_data(b, b"b" * (100 * KiB))
    frames = [next_frame(pair, pair.dialer) for _ in range(3)]
    assert [(f.channel_id, len(f.payload)) for f in frames] == [
        (b, QUANTUM),
        (a, QUANTUM),
        (b, QUANTUM),
    ]
