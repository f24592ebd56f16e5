"""Dropped-connection summaries: counted by stage and reason, one line per interval."""

from __future__ import annotations

from hub.net.dropcount import MAX_SOURCES, DropCounter


def test_one_summary_per_interval_with_counts_by_stage_and_reason() -> None:
    drops = DropCounter(interval=60.0)
    assert drops.summary(0.0) is None  # nothing happened: nothing to say
    for i in range(5000):
        drops.add("hello", "closed early", 10.0 + i * 0.001, "127.0.0.2")
    for _ in range(58):
        drops.add("hello", "not TLS", 20.0, "127.0.0.3")
    for _ in range(10):
        drops.add("tls", "no reply to our flight", 30.0, "127.0.0.2")
    drops.add("tls", "reset by peer", 30.0)
    assert drops.summary(69.9) is None  # the interval runs from the first drop
    line = drops.summary(70.0)
    assert line == (
        "connections dropped in the last 60 s: "
        "5058 before TLS (closed early 5000, not TLS 58), "
        "11 TLS handshake failures (no reply to our flight 10, reset by peer 1); "
        "most from 127.0.0.2 (5010)"
    )
    assert drops.summary(200.0) is None  # reported: a quiet minute says nothing
    assert drops.totals["hello"] == 5058 and drops.totals["tls"] == 11
    drops.add("refused", "per-address cap", 300.0)
    assert drops.summary(359.0) is None
    assert drops.summary(361.0) == (
        "connections dropped in the last 61 s: 1 refused at accept (per-address cap 1)"
    )


def test_sources_remembered_are_bounded() -> None:
    drops = DropCounter(interval=1.0)
    for i in range(MAX_SOURCES + 500):
        drops.add("hello", "closed early", 0.0, f"10.0.{i // 256}.{i % 256}")
    drops.add("hello", "closed early", 0.0, "10.0.0.7")
    assert len(drops._sources) == MAX_SOURCES
    line = drops.summary(1.0)
    assert line is not None and line.endswith("most from 10.0.0.7 (2)")
