"""The sans-I/O resumable stream: random writes, random splits, random breaks.

Two :class:`ResumeStream` ends are pumped through a simulated link that cuts the
bytes at random places, loses whatever is in flight when it breaks, and comes back
with the handshake's counts. Whatever happens, each side's application must read
exactly the bytes the other wrote: no gap, no duplicate, EOF last.
"""

from __future__ import annotations

import random

import pytest

from remoteler.resume.frames import MAX_DATA, FrameType, ResumeProtocolError, encode, encode_ack
from remoteler.resume.stream import Data, Eof, LinkDead, ReplayOverflow, ResumeStream


class End:
    """One side: its stream, what its application wrote and read."""

    def __init__(self, stream: ResumeStream) -> None:
        self.stream = stream
        self.wrote = bytearray()
        self.read = bytearray()
        self.eof = False

    def take(self, events: list[object]) -> None:
        for event in events:
            if isinstance(event, Data):
                assert not self.eof
                self.read += event.data
            elif isinstance(event, Eof):
                self.eof = True
            else:
                raise AssertionError(f"unexpected {event!r}")


def _simulate(seed: int, steps: int = 400) -> tuple[End, End, int]:
    rng = random.Random(seed)
    limit = rng.choice([MAX_DATA, 300_000, 1 << 20])
    ends = [
        End(ResumeStream(limit, queue_limit=8 << 20, ack_every=rng.randint(1, limit)))
        for _ in range(2)
    ]
    now = 0.0
    for end in ends:
        end.stream.attach(0, now)
    wires = [bytearray(), bytearray()]  # [0]: a -> b, [1]: b -> a
    breaks = 0

    def pump(i: int, max_bytes: int) -> None:
        src, dst = ends[i], ends[1 - i]
        wires[i] += b"".join(src.stream.take_output(now))
        n = min(len(wires[i]), max_bytes)
        if n:
            chunk = bytes(wires[i][:n])
            del wires[i][:n]
            dst.take(dst.stream.receive(chunk, now))

    for _ in range(steps):
        now += rng.random() * 0.5
        op = rng.random()
        i = rng.randrange(2)
        end = ends[i]
        if op < 0.35 and not end.stream.eof_written:
            size = rng.choice([1, 7, 1000, 65_536, 300_000])
            if end.stream.queued + size <= end.stream.queue_limit:
                data = rng.randbytes(size)
                end.stream.write(data)
                end.wrote += data
        elif op < 0.85:
            pump(i, rng.choice([1, 5, 13, 4096, 100_000, 1 << 22]))
        elif op < 0.95:  # the link breaks: what was in flight is lost
            breaks += 1
            for w in wires:
                w.clear()
            for e in ends:
                e.stream.detach()
            a, b = ends
            a_rx, b_rx = a.stream.received, b.stream.received
            a.stream.attach(b_rx, now)
            b.stream.attach(a_rx, now)
        elif op < 0.97:
            ends[i].stream.write_eof()
        else:
            for e in ends:
                e.stream.handle_timer(now)
    for end in ends:
        end.stream.write_eof()
    for _ in range(10_000):
        pump(0, 1 << 22)
        pump(1, 1 << 22)
        if all(e.stream.finished for e in ends) and not any(wires):
            break
    return ends[0], ends[1], breaks


@pytest.mark.parametrize("seed", range(120))
def test_each_side_reads_exactly_what_the_other_wrote(seed: int) -> None:
    a, b, _ = _simulate(seed)
    assert bytes(b.read) == bytes(a.wrote)
    assert bytes(a.read) == bytes(b.wrote)
    assert a.eof and b.eof
    assert a.stream.finished and b.stream.finished
    assert a.stream.unacked == 0 and a.stream.queued == 0


def test_the_simulation_does_break_links() -> None:
    assert sum(_simulate(seed)[2] for seed in range(20)) > 20


def test_replay_starts_at_the_peers_count() -> None:
    a, b = ResumeStream(), ResumeStream()
    a.attach(0, 0.0)
    b.attach(0, 0.0)
    a.write(b"hello ")
    b.receive(b"".join(a.take_output(0.0)), 0.0)
    a.write(b"world")
    a.take_output(0.0)  # lost with the link
    a.detach()
    b.detach()
    a.attach(b.received, 1.0)
    assert a.replayed == 5
    events = b.receive(b"".join(a.take_output(1.0)), 1.0)
    assert events == [Data(b"world")]


def test_a_peer_count_outside_what_we_hold_is_refused() -> None:
    a = ResumeStream()
    a.attach(0, 0.0)
    a.write(b"x" * 10)
    with pytest.raises(ResumeProtocolError):
        a.attach(11, 0.0)


def test_the_queue_has_a_cap() -> None:
    a = ResumeStream(MAX_DATA, queue_limit=MAX_DATA * 2)
    a.attach(0, 0.0)
    a.write(b"x" * MAX_DATA)  # the replay buffer takes it
    a.write(b"x" * MAX_DATA * 2)  # waits for acknowledgements
    assert a.unacked == MAX_DATA and a.queued == MAX_DATA * 2
    with pytest.raises(ReplayOverflow):
        a.write(b"x")
    a.receive(encode_ack(MAX_DATA), 0.0)  # acknowledged: the queue moves up
    assert a.queued == MAX_DATA and a.unacked == MAX_DATA


@pytest.mark.parametrize(
    "garbage",
    [
        encode_ack(99),  # acknowledges bytes never sent
        b"\x63\x00\x00\x00\x00",  # unknown frame type
        encode(FrameType.DATA, b"")[:1] + (MAX_DATA + 1).to_bytes(4, "big"),
        encode(FrameType.ACK, b"\x00"),  # short ACK
        encode(FrameType.EOF) + encode(FrameType.EOF),
        encode(FrameType.EOF) + encode(FrameType.DATA, b"late"),
    ],
)
def test_garbage_from_the_link_is_a_protocol_error(garbage: bytes) -> None:
    a = ResumeStream()
    a.attach(0, 0.0)
    with pytest.raises(ResumeProtocolError):
        a.receive(garbage, 0.0)


def test_keepalive_and_dead_link_timers() -> None:
    a = ResumeStream(keepalive=5.0, dead_after=15.0)
    assert a.get_timer() is None  # detached: no timers
    a.attach(0, 100.0)
    assert a.get_timer() == 105.0
    assert a.handle_timer(105.0) is None
    assert a.take_output(105.0) == [encode_ack(0)]  # the keepalive
    a.receive(encode_ack(0), 110.0)
    assert a.handle_timer(124.9) is None
    assert a.handle_timer(125.0) == LinkDead()


def test_acks_follow_the_ack_interval() -> None:
    a, b = ResumeStream(ack_every=1000), ResumeStream(ack_every=1000)
    a.attach(0, 0.0)
    b.attach(0, 0.0)
    a.write(b"x" * 999)
    b.receive(b"".join(a.take_output(0.0)), 0.0)
    assert b.take_output(0.0) == []
    a.write(b"x")
    b.receive(b"".join(a.take_output(0.0)), 0.0)
    assert b.take_output(0.0) == [encode_ack(1000)]


def test_data_right_behind_the_handshake_is_acknowledged_at_once() -> None:
    """The client told the device its count in RESUME, then received replayed DATA in
    the same read as RESUMED: attach acknowledges it, not the keepalive 5 s later."""
    device, client = ResumeStream(), ResumeStream()
    device.attach(0, 0.0)
    device.write(b"last words")
    device.take_output(0.0)  # lost with the link
    device.detach()
    device.attach(0, 1.0)  # the client's RESUME said 0
    client.receive(b"".join(device.take_output(1.0)), 1.0)  # the replay arrives early
    client.attach(0, 1.0, told=0)
    assert client.take_output(1.0) == [encode_ack(10)]
