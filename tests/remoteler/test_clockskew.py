"""Skew arithmetic and wording (remoteler/clockskew.py): pure functions."""

from __future__ import annotations

import math

import pytest

from remoteler.clockskew import (
    DEFAULT_MAX_SKEW,
    SkewSample,
    describe_skew,
    format_skew,
    human_span,
    sample,
    within,
)

HUB = 1_797_000_000.0


def test_sample_takes_the_hub_stamp_halfway_through_the_round_trip() -> None:
    # 20 min behind, answered 0.4 s later: the hub stamped it mid-way
    got = sample(HUB - 1200.2, HUB - 1199.8, HUB)
    assert got is not None
    assert math.isclose(got.skew, -1200.0) and math.isclose(got.error, 0.2, abs_tol=1e-6)
    assert sample(HUB + 86400, HUB + 86400, HUB) == SkewSample(86400.0, 0.0)


@pytest.mark.parametrize(
    ("sent", "received", "hub"),
    [
        (10.0, 9.0, HUB),  # negative round trip
        (float("nan"), 1.0, HUB),
        (1.0, 2.0, float("inf")),
        (HUB, HUB, HUB + 200 * 365 * 86400),  # absurd
    ],
)
def test_sample_refuses_junk(sent: float, received: float, hub: float) -> None:
    assert sample(sent, received, hub) is None


def test_bound_is_judged_to_the_minute() -> None:
    assert within(86400.003, DEFAULT_MAX_SKEW)  # "a day ahead", measured with a round trip
    assert within(-86400.0, DEFAULT_MAX_SKEW)
    assert not within(86400 + 61, DEFAULT_MAX_SKEW)
    assert not within(-30 * 86400, DEFAULT_MAX_SKEW)


def test_words_a_person_reads() -> None:
    assert describe_skew(-1200.4) == "this device's clock is 20 min behind the hub's"
    assert describe_skew(86400.01) == "this device's clock is 24 h ahead of the hub's"
    assert describe_skew(-30 * 86400) == "this device's clock is 30 days behind the hub's"
    assert human_span(45) == "45 s" and human_span(3 * 3600) == "3 h"
    assert human_span(1.5 * 3600) == "1.5 h"
    assert format_skew(None) == format_skew(59.0) == format_skew(float("nan")) == "-"
    assert format_skew(-1200.0) == "-20 min" and format_skew(86400.0) == "+24 h"
