"""The fleet query (hub/web/fleet.py): parsing, filtering, sorting, paging."""

from __future__ import annotations

from typing import Any

import pytest

from hub.web.fleet import MAX_PAGE_SIZE, FleetQuery, parse_query, run_query
from remoteler.errors import UsageError


def _rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "name": f"truck-{i:05d}",
            "labels": {"env": "prod" if i % 2 else "dev", "site": f"s{i % 3}"},
            "online": i % 5 != 0,
            "last_seen": None if i % 7 == 0 else 1000.0 + i,
            "version": f"1.{i % 4}.0",
            "audit_pending": i % 11,
            "recording": "off",
        }
        for i in range(n)
    ]


def test_parse_reads_every_parameter_and_refuses_bad_ones() -> None:
    q = parse_query(
        {"q": " Truck ", "label": "env=prod, site=s1", "state": "online", "sort": "-last_seen"}
    )
    assert q == FleetQuery("truck", {"env": "prod", "site": "s1"}, "online", "last_seen", True)
    assert parse_query({"size": "100000"}).page_size == MAX_PAGE_SIZE
    assert parse_query({"page": "-3"}).page == 1
    for bad in ({"label": "env"}, {"state": "maybe"}, {"sort": "secret"}, {"page": "x"}):
        with pytest.raises(UsageError):
            parse_query(bad)


def test_filters_combine_and_totals_count_the_matches() -> None:
    rows = _rows(100)
    out = run_query(rows, parse_query({"label": "env=prod", "state": "offline"}))
    expected = [r["name"] for r in rows if r["labels"]["env"] == "prod" and not r["online"]]
    assert [r["name"] for r in out["nodes"]] == expected and out["total"] == len(expected)
    assert out["fleet"] == {"nodes": 100, "online": 80}
    assert run_query(rows, parse_query({"q": "site=s2"}))["total"] == 33
    assert run_query(rows, parse_query({"q": "1.3.0"}))["total"] == 25


def test_sort_puts_missing_values_last_and_pages_do_not_overlap() -> None:
    rows = _rows(30)
    seen = run_query(rows, parse_query({"sort": "last_seen", "size": "100"}))["nodes"]
    stamps = [r["last_seen"] for r in seen]
    known = [s for s in stamps if s is not None]
    assert known == sorted(known) and stamps[len(known) :] == [None] * (len(stamps) - len(known))
    pages = [
        run_query(rows, parse_query({"sort": "-audit_pending", "size": "7", "page": str(p)}))
        for p in range(1, 6)
    ]
    names = [r["name"] for page in pages[:5] for r in page["nodes"]]
    assert len(names) == len(set(names)) == 30 and pages[0]["pages"] == 5
    assert pages[4]["page"] == 5  # past the last page: the last page
    counts = [r["audit_pending"] for page in pages for r in page["nodes"]]
    assert counts == sorted(counts, reverse=True)
