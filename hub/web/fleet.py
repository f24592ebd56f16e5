"""The fleet view's query: search, label filters, state, sort and page (sans-I/O).

Rows are what ``nodes.list`` gives ``tsh ls`` (the user's visible nodes only); the
server sorts and pages them so a browser never holds 10,000 rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from remoteler.errors import UsageError

SORT_KEYS = (
    "name",
    "online",
    "last_seen",
    "version",
    "audit_pending",
    "recording",
    "cert_expires",
)
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
MAX_QUERY = 200


@dataclass(frozen=True)
class FleetQuery:
    search: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    #: "online", "offline" or "" (both)
    state: str = ""
    sort: str = "name"
    descending: bool = False
    page: int = 1
    page_size: int = DEFAULT_PAGE_SIZE


def parse_query(params: Mapping[str, str]) -> FleetQuery:
    """A query from the URL's parameters; a bad one is a UsageError saying what to fix.

    ``label`` is ``key=value[,key=value...]``; ``sort`` is a key of :data:`SORT_KEYS`,
    ``-key`` for descending.
    """
    search = params.get("q", "")[:MAX_QUERY].strip().lower()
    labels: dict[str, str] = {}
    for part in params.get("label", "")[:MAX_QUERY].split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"label filter {part!r} is not key=value")
        labels[key.strip()] = value.strip()
    state = params.get("state", "")
    if state not in ("", "online", "offline"):
        raise UsageError("state must be online, offline or empty")
    sort = params.get("sort", "name") or "name"
    descending = sort.startswith("-")
    sort = sort.lstrip("-")
    if sort not in SORT_KEYS:
        raise UsageError(f"sort by one of {', '.join(SORT_KEYS)}")
    try:
        page = max(1, int(params.get("page", "1")))
        size = min(MAX_PAGE_SIZE, max(1, int(params.get("size", str(DEFAULT_PAGE_SIZE)))))
    except ValueError:
        raise UsageError("page and size are whole numbers") from None
    return FleetQuery(search, labels, state, sort, descending, page, size)


def _matches(row: Mapping[str, Any], q: FleetQuery) -> bool:
    labels = row.get("labels") or {}
    if any(labels.get(k) != v for k, v in q.labels.items()):
        return False
    if q.state and bool(row.get("online")) != (q.state == "online"):
        return False
    if q.search:
        hay = [str(row.get("name", "")), str(row.get("version", ""))]
        hay += [f"{k}={v}" for k, v in labels.items()]
        return any(q.search in h.lower() for h in hay)
    return True


def _sort_key(row: Mapping[str, Any], key: str) -> tuple[int, Any]:
    value = row.get(key)
    if value is None:
        return (1, 0)  # no value sorts last
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, (int, float)):
        return (0, value)
    return (0, str(value).lower())


def run_query(rows: Sequence[Mapping[str, Any]], q: FleetQuery) -> dict[str, Any]:
    """One page of matching rows, with the totals the page shows."""
    hits = [r for r in rows if _matches(r, q)]
    hits.sort(key=lambda r: str(r.get("name", "")))  # ties stay in name order
    if q.sort != "name" or q.descending:
        hits.sort(key=lambda r: _sort_key(r, q.sort), reverse=q.descending)
    pages = max(1, -(-len(hits) // q.page_size))
    page = min(q.page, pages)
    start = (page - 1) * q.page_size
    online = sum(1 for r in rows if r.get("online"))
    return {
        "nodes": list(hits[start : start + q.page_size]),
        "total": len(hits),
        "page": page,
        "pages": pages,
        "page_size": q.page_size,
        "fleet": {"nodes": len(rows), "online": online},
    }
