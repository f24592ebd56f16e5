"""The version scheme: dotted numbers, optional pre-release, SemVer precedence."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_tools.versions import compare_versions, is_version

ORDERED = [
    "0.9",
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1",
    "1.0.1",
    "1.2",
    "1.10",
    "1.10.0.1",
    "2.0.0",
]


def test_order() -> None:
    for i, a in enumerate(ORDERED):
        for j, b in enumerate(ORDERED):
            assert compare_versions(a, b) == (i > j) - (i < j), (a, b)


def test_missing_parts_are_zero() -> None:
    assert compare_versions("1.2", "1.2.0.0") == 0
    assert compare_versions("1.2-rc.1", "1.2.0-rc.1") == 0


@pytest.mark.parametrize(
    "bad", ["", "v1", "1.", ".1", "01", "1.02", "1.2.3.4.5", "1.0+build", "1.0-", "1..2", "x" * 65]
)
def test_refused(bad: str) -> None:
    assert not is_version(bad)
    with pytest.raises(ValueError, match="bad version"):
        compare_versions(bad, "1")


VERSIONS = st.builds(
    lambda nums, pre: ".".join(map(str, nums)) + (f"-{'.'.join(pre)}" if pre else ""),
    st.lists(st.integers(0, 30), min_size=1, max_size=4),
    st.lists(st.sampled_from(["rc", "beta", "0", "1", "12", "a1"]), max_size=3),
)


@given(VERSIONS, VERSIONS, VERSIONS)
def test_total_order(a: str, b: str, c: str) -> None:
    assert compare_versions(a, a) == 0
    assert compare_versions(a, b) == -compare_versions(b, a)
    if compare_versions(a, b) <= 0 and compare_versions(b, c) <= 0:
        assert compare_versions(a, c) <= 0
