"""The link pacer (sans-I/O, clock passed in) and the core's per-frame cap it feeds."""

from __future__ import annotations

from test_connection import Pair

from remoteler.wire.connection import Connection, Role
from remoteler.wire.frames import DataFrame, decode_frame
from remoteler.wire.limits import Limits
from remoteler.wire.pace import FLOOR, PROOF, START, TARGET_DELAY, LinkPacer
from remoteler.wire.sched import LOWER_SHARE

CHUNK = 256 * 1024


def test_blocked_sends_measure_the_rate_and_size_the_budget() -> None:
    pacer = LinkPacer(CHUNK, start=16 * 1024)
    assert pacer.frame_max(CHUNK) == 16 * 1024  # cautious until the link is known
    # A 10 KiB/s link: a send blocks until the buffers below drained; between the
    # ends of two blocked sends the link drained what was sent meanwhile.
    pacer.sent(4096, 0.4, now=1.0)  # the first block only marks the time
    assert pacer.rate is None
    pacer.sent(2048, 0.0, now=1.01)  # fitted in the buffers
    pacer.sent(2048, 0.39, now=1.4)
    assert pacer.rate is not None and abs(pacer.rate - 10240) < 1
    assert pacer.budget == max(FLOOR, int(10240 * TARGET_DELAY))
    assert pacer.frame_max(CHUNK) == pacer.budget


def test_an_idle_writer_starts_a_new_interval() -> None:
    pacer = LinkPacer(CHUNK, start=16 * 1024)
    pacer.sent(4096, 0.4, now=1.0)
    pacer.idle()  # nothing to send for a minute: not the link's time
    pacer.sent(4096, 0.4, now=61.0)
    assert pacer.rate is None
    pacer.sent(4096, 0.4, now=61.4)
    assert pacer.rate is not None and abs(pacer.rate - 10240) < 1


def test_a_fast_link_grows_the_budget_to_no_cap() -> None:
    pacer = LinkPacer(CHUNK)
    assert pacer.budget == START
    now = 0.0
    for _ in range(200):
        now += 0.001
        pacer.sent(pacer.frame_max(CHUNK) + 16, 0.0, now)  # whole budgets, never blocked
    assert pacer.budget is None and pacer.frame_max(CHUNK) == CHUNK


def test_filling_empty_buffers_is_no_proof_of_a_fast_link() -> None:
    # A slow link's buffers take a few budgets at once; the next send blocks.
    pacer = LinkPacer(CHUNK, start=4096)
    for _ in range(PROOF - 1):
        pacer.sent(4096, 0.0, now=1.0)
    assert pacer.budget == 4096


def test_small_unblocked_sends_say_nothing_about_the_rate() -> None:
    pacer = LinkPacer(CHUNK, start=16 * 1024)
    pacer.sent(20_000, 0.5, now=1.0)  # slow link: budget ~4 KB
    budget = pacer.budget
    for i in range(1000):  # keystrokes and control frames, ten a second
        pacer.sent(40, 0.0, now=2.0 + i / 10)
    assert pacer.budget == budget


def test_sends_just_under_the_budgets_pace_do_not_grow_it() -> None:
    pacer = LinkPacer(CHUNK, start=4096)  # 4 KiB per 0.1 s: 40 KiB/s
    now = 1.0
    for _ in range(100):
        now += 0.13  # 4 KiB every 0.13 s: ~31 KiB/s, never blocked
        pacer.sent(4096, 0.0, now)
    assert pacer.budget == 4096


def test_short_blocks_add_up_to_a_window_before_they_count() -> None:
    pacer = LinkPacer(CHUNK, start=16 * 1024)
    pacer.sent(1000, 0.05, now=1.0)
    pacer.sent(1000, 0.05, now=1.1)
    assert pacer.rate is None and pacer.budget == 16 * 1024  # 0.1 s: not a window yet
    pacer.sent(1000, 0.05, now=1.25)
    assert pacer.rate is not None and abs(pacer.rate - 2000 / 0.25) < 1e-6


def test_frame_max_cuts_a_lone_channels_chunks() -> None:
    a = Connection(Role.DIALER, Limits(heartbeat_interval=0))
    b = Connection(Role.LISTENER, Limits(heartbeat_interval=0))
    cid = a.open_channel("bulk", {})
    for m in a.messages_to_send():
        b.receive_message(m, 0.0)
    b.events_received()
    b.accept_channel(cid)
    for m in b.messages_to_send():
        a.receive_message(m, 0.0)
    a.events_received()
    a.send_data(cid, b"x" * 100_000)
    # Alone on the tunnel, the channel would send one 100,000-byte frame.
    (whole,) = a.messages_to_send(1)
    frame = decode_frame(whole, a.limits)
    assert isinstance(frame, DataFrame) and len(frame.payload) == 100_000
    a.send_data(cid, b"y" * 10_000)
    sizes = []
    while messages := a.messages_to_send(1, frame_max=1024):
        for m in messages:
            frame = decode_frame(m, a.limits)
            assert isinstance(frame, DataFrame)
            sizes.append(len(frame.payload))
    assert sum(sizes) == 10_000 and max(sizes) == 1024


def test_audit_keeps_its_share_when_the_pacer_cuts_frames() -> None:
    # A slow link's budget cuts every frame to 1 KiB; the LOW class (recordings,
    # audit) must still get ~1/(LOWER_SHARE + 1) of the link beside a saturating
    # session, not one 1 KiB frame per LOWER_SHARE quanta (128 KiB) of it.
    pair = Pair(Limits(initial_window=32 << 20))
    bulk, audit = pair.open("ssh"), pair.open("audit")
    pair.dialer.send_data(bulk, b"b" * (4 << 20))
    pair.dialer.send_data(audit, b"a" * (1 << 20))
    sent = {bulk: 0, audit: 0}
    for _ in range(20 * (LOWER_SHARE + 1)):
        (message,) = pair.dialer.messages_to_send(1, frame_max=1024)
        frame = decode_frame(message, pair.dialer.limits)
        assert isinstance(frame, DataFrame) and len(frame.payload) <= 1024
        sent[frame.channel_id] += len(frame.payload)
    share = sent[audit] / (sent[bulk] + sent[audit])
    assert share >= 0.8 / (LOWER_SHARE + 1), sent


def test_a_fast_link_whose_sends_all_block_on_a_busy_loop_leaves_the_floor() -> None:
    # After a slow spell (or a slow-reading peer) the budget is at the floor; the
    # link is fast again but every send "blocks" 5 ms on a loaded event loop.
    # What was sent per unit of time still grows with the budget: no fixed point.
    pacer = LinkPacer(CHUNK, start=FLOOR)
    now = 0.0
    for _ in range(400):
        if pacer.budget is None:
            break
        now += 0.005
        pacer.sent(pacer.frame_max(CHUNK), 0.005, now)
    assert pacer.budget is None, pacer.budget
