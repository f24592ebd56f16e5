"""The agent's view of the hub's time (edge_agent/clock.py): fake wall clock."""

from __future__ import annotations

from edge_agent.clock import HubClock
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
    clock = HubClock(wall=lambda: LOCAL)
    assert clock.observe(SkewSample(5.0, 0.0)) is None  # under a minute: nothing to say
    assert clock.observe(SkewSample(-1200.0, 0.0)) is not None
    assert clock.observe(SkewSample(-1201.0, 0.0)) is None  # jitter
    assert clock.observe(SkewSample(-1300.0, 0.0)) is not None  # drifted further
    assert clock.observe(SkewSample(0.5, 0.0)) is None  # NTP fixed it
    assert clock.observe(SkewSample(-1300.0, 0.0)) is not None  # and it broke again
