"""What the hub keeps of a heartbeat's clock skew (hub/node_status.py)."""

from __future__ import annotations

import pytest

from hub.node_status import parse_status


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (-1200.0, -1200.0),
        (86400, 86400.0),
        (float("nan"), None),
        (float("inf"), None),
        (1e12, None),  # beyond 100 years
        (True, None),
        ("-1200", None),
    ],
)
def test_clock_skew_kept_only_as_a_sane_number(sent: object, kept: float | None) -> None:
    status = parse_status({"version": "0.1.0", "clock_skew": sent})
    assert status.clock_skew == kept
    assert "clock_skew" not in status.unknown


def test_absent_skew_is_none() -> None:
    assert parse_status({"version": "0.1.0"}).clock_skew is None
