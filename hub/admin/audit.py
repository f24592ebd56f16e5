"""``admin.audit.search``: the audit trail a page at a time, never one unbounded message.

A page holds at most :data:`~remoteler.admin.AUDIT_PAGE_EVENTS` events and stops
growing past :data:`~remoteler.admin.AUDIT_PAGE_BYTES`; it ends with ``next``,
the sort key ``[time, seq, id, node]`` of its last event, which the caller sends
back as ``after`` for the next page (``None``: no more). The key is kept by the
caller, so pages may come over several connections and the hub holds nothing.
"""

from __future__ import annotations

import math
from typing import Any

from hub.admin.rpc import AdminCall, AdminHandler, opt_int, opt_text
from hub.storage.api import AuditLog, AuditQuery
from remoteler import rpc
from remoteler.admin import AUDIT_PAGE_BYTES, AUDIT_PAGE_EVENTS, AdminMethod
from remoteler.errors import UsageError

Key = tuple[float, int, str, str]


def _key(event: Any) -> Key:
    return (event.time, event.seq, event.id, event.node)


def _after(params: dict[str, Any]) -> Key | None:
    after = params.get("after")
    if after is None:
        return None
    try:
        t, seq, eid, node = after
        return (float(t), int(seq), str(eid), str(node))
    except (TypeError, ValueError):
        raise UsageError("bad 'after' key: send back the 'next' of the previous page") from None


def _opt_float(params: dict[str, Any], key: str) -> float | None:
    value = params.get(key)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise UsageError(f"parameter {key!r} must be a time in seconds")
    return float(value)


async def _session_arg(store: AuditLog, session_id: str | None) -> str | None:
    """``--session``: a whole id, or the start of one as the table shows (8 characters)."""
    from hub.audit.session_prefix import MAX_CANDIDATES, MIN_SESSION_PREFIX

    if session_id is None or len(session_id) < MIN_SESSION_PREFIX:
        return session_id
    found = await store.session_ids(session_id, None, MAX_CANDIDATES + 1)
    if not found or found[0] == session_id:  # sorted: an exact id comes first
        return session_id
    if len(found) > 1:
        more = ", ..." if len(found) > MAX_CANDIDATES else ""
        raise UsageError(
            f"--session {session_id[:64]!r} matches several sessions "
            f"({', '.join(found[:MAX_CANDIDATES])}{more}); give more characters"
        )
    return str(found[0])


async def search(call: AdminCall, params: dict[str, Any]) -> Any:
    """One page of events matching the filters; ``order`` desc walks from the newest."""
    store: AuditLog | None = call.host.audit
    if store is None:
        raise UsageError("this hub keeps no audit trail")
    limit = opt_int(params, "limit")  # what is left of --limit, None: all
    if limit is not None and limit < 1:
        raise UsageError("--limit must be at least 1")
    newest = params.get("order") == "desc"
    since, until = _opt_float(params, "since"), _opt_float(params, "until")
    after = _after(params)
    storage = call.host.storage
    node = opt_text(params, "node")
    if node is not None:
        found = await storage.nodes.get(node)
        node = found.id if found else node  # a removed node's id or "hub" still works
    if after is not None:  # resume at the key's time; events before it there are skipped
        if newest:
            edge = math.nextafter(after[0], math.inf)
            until = edge if until is None else min(until, edge)
        else:
            since = after[0] if since is None else max(since, after[0])
    want = AUDIT_PAGE_EVENTS if limit is None else min(limit, AUDIT_PAGE_EVENTS)
    events: list[dict[str, Any]] = []
    size = 0
    last: Key | None = None
    full = False
    iterator = store.iter_search(
        AuditQuery(
            type=opt_text(params, "type"),
            node=node,
            user=opt_text(params, "user"),
            session_id=await _session_arg(store, opt_text(params, "session_id")),
            since=since,
            until=until,
            limit=None,
            newest_first=newest,
        )
    )
    try:
        async for event in iterator:
            key = _key(event)
            if after is not None and (key >= after if newest else key <= after):
                continue
            wire = event.to_wire()
            events.append(wire)
            size += len(rpc.encode(wire))
            last = key
            if len(events) >= want or size >= AUDIT_PAGE_BYTES:
                full = True
                break
    finally:
        await iterator.aclose()  # type: ignore[attr-defined]
    done = not full or (limit is not None and len(events) >= limit)
    ids = {e["node"] for e in events}
    names = {n.id: n.name for n in await storage.nodes.all() if n.id in ids}
    return {"events": events, "next": None if done else list(last or ()), "names": names}


METHODS: dict[AdminMethod, AdminHandler] = {AdminMethod.AUDIT_SEARCH: search}
