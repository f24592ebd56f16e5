"""The agent's view of the hub's time (edge_agent/clock.py): fake wall clock."""

from __future__ import annotations

from edge_agent.clock import REPORT_INTERVAL, HubClock
from remoteler.clockskew import SkewSample

LOCAL = 1_797_000_000.0


def test_corrected_time_within_the_bound() -> None:
    clock = HubClock(wall=lambda: LOCAL)
    assert clock.now() == LOCAL and clock.hint() == ""  # nothing known yet
    report = clock.observe(SkewSample(-1200.0, 0.01))
    assert clock.now() == LOCAL + 1200.0
    assert report is not None and report.corrected
    assert report.message.startswith("this device's clock is 20 min behind the hub's")


def test_beyond_the_bound_the_local_clock_rules_and_errors_say_why() -> None:
    clock = HubClock(bound=86400.0, wall=lambda: LOCAL)
    report = clock.observe(SkewSample(30 * 86400.0, 0.01))
    assert report is not None and not report.corrected
    assert clock.now() == LOCAL
    assert clock.hint() == (
        " (this device's clock is 30 days ahead of the hub's, more than the 24 h this "
        "agent corrects for; set the clock (NTP, or 'date -s'))"
    )


def test_reported_once_until_it_moves_by_a_minute() -> None:
    mono = [0.0]
    clock = HubClock(wall=lambda: LOCAL, mono=lambda: mono[0])

    def observe(skew: float) -> object:
        mono[0] += REPORT_INTERVAL  # hours apart: the rate limit is not what is tested
        return clock.observe(SkewSample(skew, 0.0))

    assert observe(5.0) is None  # under a minute: nothing to say
    assert observe(-1200.0) is not None
    assert observe(-1201.0) is None  # jitter
    assert observe(-1300.0) is not None  # drifted further
    assert observe(0.5) is None  # NTP fixed it
    assert observe(-1300.0) is not None  # and it broke again


def test_a_flapping_skew_is_reported_at_most_once_per_interval() -> None:
    """A skew wobbling around the threshold (or jumping by minutes each beat, on a
    link whose round trip is minutes long) must not flood the audit trail."""
    mono = [0.0]
    clock = HubClock(wall=lambda: LOCAL, mono=lambda: mono[0])
    reports = []
    for beat in range(600):  # 100 minutes of heartbeats every 10 s
        mono[0] = beat * 10.0
        skew = (-61.0, -59.0, -200.0, 0.0)[beat % 4]
        reports.append(clock.observe(SkewSample(skew, 0.0)))
    sent = [r for r in reports if r is not None]
    assert sent and len(sent) <= 100 * 60 / REPORT_INTERVAL + 1
    # the suppressed news is not lost: after the interval the current skew is reported
    mono[0] += REPORT_INTERVAL
    assert clock.observe(SkewSample(-3600.0, 0.0)) is not None


def test_a_clock_set_meanwhile_drops_the_correction_until_the_next_answer() -> None:
    """NTP comes up (or someone runs ``date -s``) on a device 20 min behind: the
    skew learnt before is stale. Applying it would put certificates and audit
    times 20 min in the future until the next heartbeat answer, and for good on
    a device serving ``--local-listen`` while the hub is away."""
    wall, mono = [LOCAL], [0.0]
    clock = HubClock(wall=lambda: wall[0], mono=lambda: mono[0])
    clock.observe(SkewSample(-1200.0, 0.0))
    wall[0] += 30.0
    mono[0] += 30.0  # time passes, the clock untouched: still corrected
    assert clock.now() == LOCAL + 30.0 + 1200.0
    wall[0] += 1200.0 + 10.0  # the clock is set right
    mono[0] += 10.0
    assert clock.now() == wall[0]  # the local clock rules again
    assert clock.skew is None and clock.hint() == ""
    assert clock.observe(SkewSample(0.2, 0.0)) is None and clock.now() == wall[0] - 0.2
