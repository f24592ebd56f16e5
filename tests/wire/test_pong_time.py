"""The hub's time in PONGs (docs/wire-protocol.md "Heartbeats"): two cores back to
back, fake clocks, no sockets."""

from __future__ import annotations

from test_connection import heartbeat_pair

from remoteler.wire.events import PongReceived
from remoteler.wire.frames import PongFrame, decode_frame, encode_frame
from remoteler.wire.limits import Limits


def test_pong_carries_the_hub_time_when_asked() -> None:
    pair = heartbeat_pair()
    pair.listener.pong_clock = lambda: 1_797_000_000.5  # the hub's wall clock
    pair.now = 10.0
    pair.dialer.handle_timer(10.0)
    pair.send(pair.dialer)
    pair.now = 10.5
    assert pair.send(pair.listener) == [PongFrame(0, 1_797_000_000.5)]
    assert pair.dialer.events_received() == [PongReceived(0, 0.5, 1_797_000_000.5)]


def test_old_style_pong_without_time_still_decodes() -> None:
    pair = heartbeat_pair()  # a hub that was not asked (or an old hub): 2 items
    pair.now = 10.0
    pair.dialer.handle_timer(10.0)
    pair.send(pair.dialer)
    assert encode_frame(PongFrame(0)) == pair.listener.messages_to_send()[0]
    assert decode_frame(encode_frame(PongFrame(0, None)), Limits()) == PongFrame(0)


def test_first_ping_at_start_when_asked() -> None:
    pair = heartbeat_pair()
    pair.dialer.ping_at_start = True
    pair.dialer.start_timers(100.0)
    assert pair.dialer.get_timer() == 100.0
    pair.dialer.handle_timer(100.0)
    assert pair.send(pair.dialer)  # the PING left at once
    plain = heartbeat_pair()
    plain.dialer.start_timers(100.0)
    assert plain.dialer.get_timer() == 110.0
