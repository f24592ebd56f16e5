"""The audit channel codec, fed one byte at a time and with garbage."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from remoteler.audit import EventType, MessageReader, encode_message, make_event
from remoteler.audit.stream import ack_message, batch_message, parse_ack, parse_batch, parse_reply

EVENTS = [
    make_event(EventType.EXEC, node="n", command="id", exit_code=0),
    make_event(EventType.SESSION_DATA, node="n", chunk=0, codec="raw", data=b"\x00" * 300),
]
MESSAGES = [
    batch_message(EVENTS),
    ack_message([e.id for e in EVENTS]),
    {"t": "batch", "events": []},
]


def test_one_byte_at_a_time() -> None:
    stream = b"".join(encode_message(m) for m in MESSAGES)
    reader = MessageReader()
    out = []
    for i in range(len(stream)):
        out += reader.feed(stream[i : i + 1])
    assert out == MESSAGES
    assert reader.buffered == 0


def test_joined_in_one_feed_and_split_anywhere() -> None:
    stream = b"".join(encode_message(m) for m in MESSAGES)
    assert MessageReader().feed(stream) == MESSAGES
    for cut in range(0, len(stream), 37):
        reader = MessageReader()
        assert reader.feed(stream[:cut]) + reader.feed(stream[cut:]) == MESSAGES


def test_reader_tells_each_message_size() -> None:
    """The hub's quota charges a batch by its encoded size (hub/audit/ingest.py)."""
    a, b = encode_message({"t": "x"}), encode_message({"t": "y" * 1000})
    reader = MessageReader()
    assert reader.feed(a + b[:10]) == [{"t": "x"}] and reader.sizes == [len(a) - 4]
    assert reader.feed(b[10:]) == [{"t": "y" * 1000}] and reader.sizes == [len(b) - 4]
    assert reader.feed(b"") == [] and reader.sizes == []


def test_batch_and_ack_parse_back() -> None:
    batch, ack, _ = MESSAGES
    events = parse_batch(batch)
    assert [e.type for e in events] == ["exec", "session.data"]
    assert parse_ack(ack) == [e.id for e in events]
    with pytest.raises(ValueError):
        parse_batch(ack)
    with pytest.raises(ValueError):
        parse_ack(batch)
    with pytest.raises(ValueError):
        parse_batch({"t": "batch", "events": [{"id": "x"}]})


def test_oversize_is_refused_from_the_header_alone() -> None:
    reader = MessageReader(max_message=100)
    with pytest.raises(ValueError, match="exceeds"):
        reader.feed((101).to_bytes(4, "big"))
    with pytest.raises(ValueError):  # the stream stays failed
        reader.feed(encode_message({"t": "ack", "ids": []}))
    with pytest.raises(ValueError, match="exceeds"):
        encode_message({"t": "x", "b": b"\x00" * 200}, max_message=100)


@pytest.mark.parametrize(
    "body",
    [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb("str"), msgpack.packb({1: 2}), b"\x92\x01"],
)
def test_garbage_is_a_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        MessageReader().feed(len(body).to_bytes(4, "big") + body)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_reader_raises_only_value_error(chunks: list[bytes]) -> None:
    reader = MessageReader(max_message=1024)
    try:
        for chunk in chunks:
            for message in reader.feed(chunk):
                assert isinstance(message, dict)
    except ValueError:
        pass


def test_an_ack_names_reused_seqs_and_bounds_the_floor() -> None:
    msg = ack_message(["a"], 30, reused=["b", "c"], seq_floor=601)
    reply = parse_reply(msg)
    assert (reply.ids, reply.reused, reply.seq_floor) == (["a"], ("b", "c"), 601)
    assert "reused" not in ack_message(["a"]) and parse_reply(ack_message(["a"])).reused == ()
    for bad in ({"reused": "b"}, {"reused": [1]}, {"seq_floor": -1}, {"seq_floor": 1 << 63}):
        with pytest.raises(ValueError):
            parse_reply({**msg, **bad})
